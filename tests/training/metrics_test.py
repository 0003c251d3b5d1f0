"""Metric averaging, BLEU, metrics.jsonl and TensorBoard event files (scalars, texts,
hparams), and the progress bar's rate and ETA on a fake clock."""

import glob
import io
import math
import os

import numpy as np
import pytest

import observability_helpers
from transformer import metrics


def test_summarize_divides_sums_by_tokens():
  sums = {"loss_sum": np.float32(6.0), "nll_sum": np.float32(4.0),
          "accuracy_sum": np.float32(3.0), "weight_sum": np.float32(4.0)}
  total = metrics.accumulate(metrics.accumulate(None, sums), sums)
  out = metrics.summarize(total, "eval")
  assert out["eval/loss"] == pytest.approx(1.5)
  assert out["eval/accuracy"] == pytest.approx(0.75)
  assert out["eval/perplexity"] == pytest.approx(math.e)
  assert out["eval/tokens"] == 8.0


def test_bleu_matches_sacrebleu_on_detokenized_text():
  refs = ["A man is riding a bike .", "Two dogs play in the snow ."]
  assert metrics.compute_bleu(refs, refs) == pytest.approx(100.0)
  assert metrics.compute_bleu(["nothing alike here", "zzz"], refs) < 5.0
  with pytest.raises(ValueError, match="2 references"):
    metrics.compute_bleu(["one"], refs)
  shouting = [r.upper() for r in refs]
  assert metrics.compute_bleu(shouting, refs) < 5.0
  assert metrics.compute_bleu(shouting, refs, lowercase=True) == pytest.approx(100.0)


def test_writer_appends_jsonl_and_tensorboard_events(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(10, {"train/loss": 3.5, "train/learning_rate": 1e-3})
  writer.write(20, {"eval/bleu": 12.5, "eval/loss": float("nan")})
  writer.close()
  records = metrics.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert records == [{"step": 10, "train/loss": 3.5, "train/learning_rate": 1e-3},
                     {"step": 20, "eval/bleu": 12.5, "eval/loss": "nan"}]
  events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  assert len(events) == 1 and os.path.getsize(events[0]) > 0


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path / "run"), enabled=False)
  writer.write(1, {"train/loss": 1.0})
  writer.close()
  assert not os.path.exists(tmp_path / "run")


class FakeClock:
  """A clock that moves only when told to."""

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_progress_bar_measures_the_throughput_of_steps_that_did_not_compile():
  clock = FakeClock()
  bar = metrics.ProgressBar(0, 100, enabled=False, clock=clock)
  bar.compiling(1)
  clock.now += 10.0
  bar.advance(1)
  for step in range(2, 11):
    clock.now += 0.5
    bar.advance(step)
  clock.now += 100.0  # An evaluation.
  bar.reset_clock()
  clock.now += 0.5
  steps_per_second, tokens_per_second = bar.update(11, loss=1.0, learning_rate=1e-3,
                                                   tokens=1100)
  assert steps_per_second == pytest.approx(2.0)  # Steps 2..11 in 5 seconds.
  assert tokens_per_second == pytest.approx(1100 * 10 / 11 / 5.0)  # Step 1's share taken out.
  bar.compiling(2)  # A window of compiling steps only: their wall time.
  clock.now += 4.0
  assert bar.update(12, loss=1.0, learning_rate=1e-3, tokens=100) == pytest.approx((0.25, 25.0))
  bar.close()


def test_progress_bar_leaves_compiling_steps_and_evaluations_out_of_the_eta():
  clock = FakeClock()
  bar = metrics.ProgressBar(0, 1000, enabled=False, clock=clock)
  assert bar.eta_seconds() is None and bar.text() == "ETA ?"
  bar.compiling(1)
  clock.now += 120.0  # The first step compiles for two minutes...
  bar.advance(1)
  assert bar.eta_seconds() is None  # ...and is no measure of the rate.
  for step in range(2, 12):
    clock.now += 0.5
    bar.advance(step)
  assert bar.steps_per_second() == pytest.approx(2.0)
  assert bar.eta_seconds() == pytest.approx((1000 - 11) / 2.0)
  clock.now += 300.0  # An evaluation...
  bar.reset_clock()  # ...after which the loop restarts the clock.
  bar.compiling(2)  # A second batch shape.
  clock.now += 60.0
  bar.advance(12)
  clock.now += 0.5
  bar.update(13, loss=2.0, learning_rate=1e-3, tokens=500)  # Also advances.
  bar.advance(13)  # A second call for the same step changes nothing.
  assert bar.steps_per_second() == pytest.approx(2.0)
  assert bar.eta_seconds() == pytest.approx((1000 - 13) / 2.0)  # 493.5 s.
  assert bar.text().startswith("ETA 08:14, 2.00 step/s, loss 2.000, lr 1.00e-03, ")


def test_progress_bar_rate_is_over_the_last_window_of_steps():
  clock = FakeClock()
  bar = metrics.ProgressBar(0, 100, enabled=False, clock=clock, window=4)
  for step in range(1, 5):
    clock.now += 1.0
    bar.advance(step)
  for step in range(5, 9):
    clock.now += 0.25
    bar.advance(step)
  assert bar.steps_per_second() == pytest.approx(4.0)


def test_progress_bar_shows_its_own_eta_and_the_compiling_note():
  clock, out = FakeClock(), io.StringIO()
  bar = metrics.ProgressBar(40, 100, clock=clock, file=out)
  bar.compiling(3)
  assert "compiling batch shape 3 (not in the ETA)" in out.getvalue().split("\r")[-1]
  assert "ETA ?" in out.getvalue().split("\r")[-1]
  clock.now += 50.0
  bar.advance(41)
  clock.now += 1.0
  bar.advance(42)
  bar.close()
  last = out.getvalue().strip().split("\r")[-1]
  assert "42/100" in last and "ETA 00:58, 1.00 step/s" in last
  assert "compiling" not in last
  assert "it/s" not in last and "<" not in last  # tqdm's own rate and ETA are not shown.


def test_format_duration():
  assert metrics.format_duration(59.4) == "00:59"
  assert metrics.format_duration(3 * 3600 + 61) == "3:01:01"
  assert metrics.format_duration(2 * 86400 + 5) == "2d 00:05"


def test_markdown_table_escapes_cells():
  table = metrics.markdown_table(["a", "b"], [["x | y", "*bold* <b>\nnext"], ["", "_"]])
  assert table.split("\n") == [
      "| a | b |",
      "|---|---|",
      "| x \\| y | \\*bold\\* &lt;b&gt; next |",
      "|   | \\_ |",
  ]


def test_flatten_config_keeps_scalars_and_writes_lists_as_json():
  flat = metrics.flatten_config({"model": {"d_model": 64, "dtype": "float32", "tied": True,
                                           "sizes": [1, 2], "extra": None}, "lr": 0.5})
  assert flat == {"model.d_model": 64, "model.dtype": "float32", "model.tied": True,
                  "model.sizes": "[1, 2]", "lr": 0.5}


def test_writer_writes_config_hparams_and_samples_into_one_event_file(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write_config(0, {"model": {"d_model": 64}, "training": {"seed": 0}},
                      metrics=["eval/loss", "eval/bleu"])
  writer.write_samples(10, [("ein Hund", "a dog", "a dog"), ("zwei | Katzen", "two cats", "")])
  writer.write(10, {"eval/bleu": 50.0})
  writer.close()
  events = observability_helpers.read_tensorboard_events(str(tmp_path / "tensorboard"))
  assert len(glob.glob(str(tmp_path / "tensorboard" / "*"))) == 1  # No extra run directory.
  assert '"d_model": 64' in events.texts["config"][0][1]
  assert events.texts["eval/samples"] == [(10, (
      "| \\# | source | reference | hypothesis |\n|---|---|---|---|\n"
      "| 1 | ein Hund | a dog | a dog |\n| 2 | zwei \\| Katzen | two cats |   |"))]
  assert {"model.d_model", "training.seed"} <= set(events.hparams)
  assert events.hparam_metrics == ["eval/loss", "eval/bleu"]
  assert events.scalars["eval/bleu"] == [(10, 50.0)]
