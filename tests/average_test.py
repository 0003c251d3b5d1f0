"""`python -m transformer.average`: averaged parameters, step selection, refusals, and the
parameters-only run directory it writes (loaded like any run, refused by training)."""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "training"))
import training_helpers  # pylint: disable=wrong-import-position
from transformer import average  # pylint: disable=wrong-import-position
from transformer import checkpointing  # pylint: disable=wrong-import-position
from transformer import translator as translator_lib  # pylint: disable=wrong-import-position
from transformer.training import errors  # pylint: disable=wrong-import-position
from transformer.training import inference  # pylint: disable=wrong-import-position
from transformer.training import loop  # pylint: disable=wrong-import-position
from transformer.training import resume  # pylint: disable=wrong-import-position

STEPS = [5, 10, 15, 20, 25, 30]  # Checkpoints of the trained run (every 5 steps, all kept).
_FAKE_VOCABULARY = b"not a real model: synthetic data never reads it"


def _config():
  config = training_helpers.tiny_copy_config(num_train_steps=30)
  config.training.max_checkpoints_to_keep = len(STEPS)
  config.training.eval_every_steps = 10  # Metrics (for --around_best) at steps 10, 20, 30.
  config.training.best_metric = "eval/loss"
  return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A trained tiny copy-task run with checkpoints at STEPS (and stand-in tokenizer files,
  which a synthetic dataset never reads, to check that they are copied)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  loop.train_and_evaluate(_config(), workdir)
  with open(os.path.join(workdir, "sentencepiece.model"), "wb") as f:
    f.write(_FAKE_VOCABULARY)
  return workdir


@pytest.fixture(scope="module")
def averaged_dir(run_dir, tmp_path_factory):
  """The last 3 checkpoints of `run_dir` averaged, and the command's result."""
  output = str(tmp_path_factory.mktemp("out") / "avg3")
  return output, average.average_checkpoints(run_dir, output, last_k=3)


def _params(workdir: str, step: int | None = None) -> list[np.ndarray]:
  loaded = inference.load_run(workdir, step=step)
  return [np.asarray(x) for x in jax.tree.leaves(loaded.state.params)]


def _command(workdir, output, *, last_k=3, upper_bound=None, around_best=False):
  """(exit status, stderr lines) of the command run in this process."""
  stdout, stderr = io.StringIO(), io.StringIO()
  status = average.run_command(str(workdir), str(output), last_k=last_k,
                               upper_bound=upper_bound, around_best=around_best,
                               stdout=stdout, stderr=stderr)
  return status, stderr.getvalue().splitlines()


def test_averaged_params_are_the_float32_mean_of_the_chosen_checkpoints(run_dir, averaged_dir):
  output, result = averaged_dir
  assert result == {"workdir": run_dir, "output": output, "steps": [20, 25, 30], "step": 30}
  per_step = [_params(run_dir, step) for step in result["steps"]]
  expected = [np.mean(np.stack(leaves).astype(np.float32), axis=0) for leaves in zip(*per_step)]
  loaded = inference.load_run(output)
  assert loaded.steps == [30] and int(loaded.state.step) == 30
  got = [np.asarray(x) for x in jax.tree.leaves(loaded.state.params)]
  assert len(got) == len(expected)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
  assert not np.allclose(got[0], per_step[-1][0])  # The average, not the latest checkpoint.


def test_output_is_a_parameters_only_run(run_dir, averaged_dir):
  output, _ = averaged_dir
  assert sorted(os.listdir(output)) == ["averaged_from.json", "checkpoints", "config.json",
                                        "sentencepiece.model"]
  assert os.listdir(os.path.join(output, "checkpoints")) == ["30"]
  for name in ("config.json", "sentencepiece.model"):
    with open(os.path.join(run_dir, name), "rb") as a, open(os.path.join(output, name),
                                                            "rb") as b:
      assert a.read() == b.read()
  with open(os.path.join(output, resume.AVERAGED_FROM)) as f:
    provenance = json.load(f)
  assert provenance["workdir"] == run_dir and provenance["steps"] == [20, 25, 30]
  assert provenance["time"]
  assert not [n for n in os.listdir(os.path.dirname(output)) if n.endswith(".tmp")]


def test_translator_loads_the_output(averaged_dir):
  output, _ = averaged_dir
  translator = translator_lib.Translator.from_workdir(output, batch_size=8)
  assert translator.steps == [30]
  hypotheses = translator.translate(["1 2 3 4", ""], beam_size=2)
  assert len(hypotheses) == 2 and hypotheses[1] == ""
  assert all(word.isdigit() or word == "<unk>" for word in hypotheses[0].split())


@pytest.mark.parametrize("kwargs, expected", [
    (dict(last_k=3), [20, 25, 30]),
    (dict(last_k=1), [30]),
    (dict(last_k=3, upper_bound=17), [5, 10, 15]),
    (dict(last_k=2, upper_bound=20), [15, 20]),
    (dict(last_k=1, best_step=15), [15]),
    (dict(last_k=3, best_step=15), [10, 15, 20]),
    (dict(last_k=2, best_step=15), [10, 15]),  # 10 and 20 tie: the earlier.
    (dict(last_k=4, best_step=5), [5, 10, 15, 20]),
    (dict(last_k=3, best_step=30), [20, 25, 30]),
])
def test_select_steps(kwargs, expected):
  assert average.select_steps(STEPS, **kwargs) == expected


def test_select_steps_refuses_too_few():
  with pytest.raises(errors.UsageError, match=r"needs 3 checkpoints at or below step 12, but "
                     r"the run has 2: \[5, 10\]"):
    average.select_steps(STEPS, 3, upper_bound=12)


def test_checkpointer_average_refuses_steps_it_does_not_have(run_dir):
  reader = checkpointing.Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=6,
                                      read_only=True)
  try:
    for steps in ([], [25, 7], [25, 25]):
      with pytest.raises(ValueError, match=r"cannot average the checkpoints at steps .* has "
                         r"\[5, 10, 15, 20, 25, 30\]"):
        reader.average(steps, None)
  finally:
    reader.close()


@pytest.mark.parametrize("metric, best", [("eval/loss", 20), ("eval/accuracy", 10)])
def test_best_checkpoint_step_is_the_best_kept_one(tmp_path, metric, best):
  records = [{"step": 10, "eval/loss": 2.0, "eval/accuracy": 0.9},
             {"step": 12, "eval/loss": 0.5, "eval/accuracy": 0.99},  # No checkpoint kept.
             {"step": 20, "eval/loss": 1.0, "eval/accuracy": 0.5},
             {"step": 30, "train/loss": 0.1}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert average.best_checkpoint_step(str(tmp_path), metric, [10, 20, 30]) == best


def test_upper_bound_and_around_best_average_the_chosen_steps(run_dir, tmp_path):
  bounded = average.average_checkpoints(run_dir, tmp_path / "bounded", last_k=2, upper_bound=17)
  assert bounded["steps"] == [10, 15]
  assert int(inference.load_run(tmp_path / "bounded").state.step) == 15
  best = average.best_checkpoint_step(run_dir, "eval/loss", STEPS)
  assert best in (10, 20, 30)
  around = average.average_checkpoints(run_dir, tmp_path / "around", last_k=2, around_best=True)
  assert around["steps"] == average.select_steps(STEPS, 2, best_step=best)
  assert best in around["steps"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(upper_bound=20, around_best=True), "give --upper_bound or --around_best, not both"),
    (dict(last_k=0), "--last_k must be >= 1, got 0"),
    (dict(last_k=7), "--last_k=7 needs 7 checkpoints, but .* has 6: [5, 10, 15, 20, 25, 30]"),
    (dict(last_k=3, upper_bound=12), "--last_k=3 needs 3 checkpoints at or below step 12, but "
     ".* has 2: [5, 10] (of [5, 10, 15, 20, 25, 30])"),
])
def test_refuses_bad_flags(run_dir, tmp_path, kwargs, message):
  status, lines = _command(run_dir, tmp_path / "out", **kwargs)
  assert status == errors.EXIT_USAGE and len(lines) == 1
  head, _, tail = message.partition(".*")
  assert lines[0].startswith("error: " + head) and lines[0].endswith(tail), lines[0]
  assert os.listdir(tmp_path) == []


def test_refuses_missing_or_non_run_workdir(tmp_path):
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "a.txt").write_text("hello")
  for workdir, message in ((tmp_path / "missing", "does not exist"),
                           (tmp_path / "notes", "has no config.json")):
    status, lines = _command(workdir, tmp_path / "out")
    assert status == errors.EXIT_USAGE and len(lines) == 1 and message in lines[0], lines
  assert sorted(os.listdir(tmp_path)) == ["notes"]


def test_refuses_existing_output_and_the_workdir_itself(run_dir, tmp_path):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  before = sorted(os.listdir(run_dir))
  for output, message in ((tmp_path / "full", "exists and is not an empty directory"),
                          (tmp_path / "full" / "keep.txt", "exists and is not an empty"),
                          (run_dir, "is the run itself")):
    status, lines = _command(run_dir, output)
    assert status == errors.EXIT_USAGE and len(lines) == 1 and message in lines[0], lines
  assert os.listdir(tmp_path / "full") == ["keep.txt"]
  assert sorted(os.listdir(run_dir)) == before
  assert sorted(os.listdir(tmp_path)) == ["full"]


def test_a_failed_write_leaves_no_output(run_dir, tmp_path, monkeypatch):
  def fail_half_way(target, *args):
    with open(os.path.join(target, "config.json"), "w") as f:
      f.write("{")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(average, "_write_run", fail_half_way)
  status, lines = _command(run_dir, tmp_path / "out", last_k=1)
  assert status == errors.EXIT_FAILED and len(lines) == 1 and "No space left" in lines[0]
  assert os.listdir(tmp_path) == []


def test_an_empty_output_directory_is_used(run_dir, tmp_path):
  (tmp_path / "empty").mkdir()
  status, _ = _command(run_dir, tmp_path / "empty", last_k=1)
  assert status == 0 and os.listdir(tmp_path / "empty" / "checkpoints") == ["30"]


def test_training_refuses_a_parameters_only_directory(averaged_dir):
  output, _ = averaged_dir
  before = sorted(os.listdir(output))
  with pytest.raises(errors.UsageError, match="holds averaged parameters only .* cannot be "
                     "trained further"):
    resume.refuse_params_only(output)
  with pytest.raises(errors.UsageError, match="holds averaged parameters only"):
    loop.train_and_evaluate(_config(), output)
  assert sorted(os.listdir(output)) == before


def test_command_line(run_dir, tmp_path):
  output = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "transformer.average", f"--workdir={run_dir}", "--last_k=2",
       f"--output={output}"], capture_output=True, text=True, timeout=300,
      cwd=training_helpers.REPO_ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == [25, 30]
  assert os.listdir(output / "checkpoints") == ["30"]
