"""Metric averaging, BLEU, metrics.jsonl and TensorBoard event files."""

import glob
import math
import os

import numpy as np
import pytest

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


def test_progress_bar_reports_tokens_per_second():
  bar = metrics.ProgressBar(0, 10, enabled=False)
  assert bar.update(5, loss=1.0, learning_rate=1e-3, tokens=1000) > 0
  bar.close()
