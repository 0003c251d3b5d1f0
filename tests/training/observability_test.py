"""What a run shows of itself: a profile of chosen steps, the config, sample translations and
the usual scalars in TensorBoard, the same in Weights & Biases (offline mode), and a progress
bar whose ETA leaves compiling steps out. Short copy-task runs."""

import glob
import gzip
import json
import os
import pathlib
import shutil
import sys

import jax
import pytest

import observability_helpers
import training_helpers
from transformer import metrics
from transformer.training import errors
from transformer.training import loop
from transformer.training import profiling
from transformer.training import run_config


def _config(num_train_steps: int, **training):
  config = training_helpers.tiny_copy_config(num_train_steps=num_train_steps)
  config.training.bleu_every_steps = 6
  config.training.bleu_num_examples = 8
  for key, value in training.items():
    config.training[key] = value
  return config


def _traced_steps(session_dir: str) -> set[int]:
  """The step numbers of the StepTraceAnnotations in a profile's trace.json.gz."""
  (path,) = glob.glob(os.path.join(session_dir, "*.trace.json.gz"))
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  return {int(e["args"]["step_num"]) for e in events
          if e.get("name") == "train" and "step_num" in e.get("args", {})}


@pytest.mark.parametrize("value", ["5", "0,3", "3,0", "a,b", "3,2,1", "-1,2"])
def test_malformed_profile_steps_are_refused_at_parse_time(value):
  config = training_helpers.tiny_copy_config().to_dict()
  config["training"]["profile_steps"] = value
  with pytest.raises(errors.UsageError, match=r"training\.profile_steps must be 'START,COUNT'"):
    run_config.parse_config(config)


def test_profile_steps_name_a_window_of_global_steps():
  config = training_helpers.tiny_copy_config().to_dict()
  config["training"]["profile_steps"] = "20,5"
  assert run_config.parse_config(config).training.profile_window == (20, 24)
  config["training"]["profile_steps"] = ""
  assert run_config.parse_config(config).training.profile_window is None


def _run_steps(profiler, steps):
  step_fn = jax.jit(lambda x: x @ x)
  x = jax.numpy.ones((8, 8))
  for step in steps:
    profiler.before_step(step)
    with profiler.step_annotation(step):
      x = step_fn(x)
    profiler.after_step(step, x)
  profiler.stop()


def test_profiler_traces_the_part_of_its_window_a_run_executes(tmp_path):
  profiler = profiling.StepProfiler((3, 4), str(tmp_path / "a"))
  _run_steps(profiler, range(1, 7))
  (session,) = profiler.trace_paths
  assert profiler.num_traced == 2 and _traced_steps(session) == {3, 4}
  resumed = profiling.StepProfiler((3, 6), str(tmp_path / "b"))
  _run_steps(resumed, range(5, 9))  # Resumed after step 4: traces the rest of the window.
  assert resumed.num_traced == 2 and _traced_steps(resumed.trace_paths[0]) == {5, 6}
  after = profiling.StepProfiler((3, 4), str(tmp_path / "c"))
  _run_steps(after, range(5, 7))  # Resumed past the window: no trace.
  assert after.trace_paths == [] and not (tmp_path / "c").exists()


def test_profiler_copies_a_trace_for_a_remote_log_dir(tmp_path, monkeypatch):
  target = str(tmp_path / "bucket" / "tensorboard")  # Stands in for gs://bucket/tensorboard.
  copies = []

  def copy_tree(source, destination):
    copies.append(source)
    shutil.copytree(source, destination)

  monkeypatch.setattr(profiling.storage, "is_remote", lambda path: path.startswith(target))
  monkeypatch.setattr(profiling.storage, "copy_tree", copy_tree)
  profiler = profiling.StepProfiler((1, 2), target)
  _run_steps(profiler, range(1, 3))
  (session,) = profiler.trace_paths
  assert session.startswith(os.path.join(target, "plugins", "profile"))
  assert glob.glob(os.path.join(session, "*.xplane.pb")) and _traced_steps(session) == {1, 2}
  (source,) = copies
  assert not source.startswith(target) and not os.path.exists(source)  # A local temporary.


def test_trace_dirs_of_processes_do_not_collide():
  assert profiling.trace_dir("/w/tensorboard", 0) == "/w/tensorboard"
  assert profiling.trace_dir("/w/tensorboard", 3) == "/w/tensorboard/process_3"


def test_a_run_writes_its_profile_config_and_samples_to_tensorboard(tmp_path, capsys):
  config = _config(6, profile_steps="2,3", num_logged_samples=3)
  loop.train_and_evaluate(config, str(tmp_path))
  tensorboard = tmp_path / "tensorboard"
  (session,) = glob.glob(str(tensorboard / "plugins" / "profile" / "*"))
  (xplane,) = glob.glob(os.path.join(session, "*.xplane.pb"))
  assert os.path.getsize(xplane) > 0
  assert _traced_steps(session) == {2, 3, 4}
  events = observability_helpers.read_tensorboard_events(str(tensorboard))
  ((step, text),) = events.texts["config"]
  assert step == 0 and json.loads(text.removeprefix("```json\n").removesuffix("\n```")) == (
      json.loads((tmp_path / "config.json").read_text()))
  assert events.hparams["training.profile_steps"].string_value == "2,3"
  assert events.hparam_metrics[-1] == "eval/bleu"
  ((step, table),) = events.texts["eval/samples"]
  rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in table.split("\n")[2:]]
  hypotheses = (tmp_path / "hypotheses" / "validation_step6.txt").read_text().split("\n")
  assert step == 6 and [row[0] for row in rows] == ["1", "2", "3"]
  assert all(source == reference for _, source, reference, _ in rows)  # The copy task.
  assert [row[3] for row in rows] == hypotheses[:3]  # The first examples' translations.
  for tag in ("train/learning_rate", "train/tokens_per_second", "eval/bleu"):
    assert [s for s, _ in events.scalars[tag]] == ([6] if tag == "eval/bleu" else [5, 6])
  assert "compiling batch shape 1 (not in the ETA)" in capsys.readouterr().err


def test_wandb_project_without_wandb_fails_before_writing(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # As if not installed.
  with pytest.raises(errors.UsageError, match=r"training\.wandb_project='p' .*pip install wandb"):
    loop.train_and_evaluate(_config(4, wandb_project="p"), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_wandb_offline_logs_the_scalars_and_samples_and_a_resume_continues_its_run(
    tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  loop.train_and_evaluate(_config(6, wandb_project="tests"), str(tmp_path))
  run_id = (tmp_path / metrics.WANDB_RUN_ID_FILE).read_text().strip()
  (first,) = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}"))
  logged = observability_helpers.read_wandb_offline_run(first)
  assert logged["id"] == run_id
  by_step = {h["_step"]: h for h in logged["history"]}
  assert sorted(by_step) == [5, 6]
  jsonl = {r["step"]: r for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))}
  assert by_step[5]["train/loss"] == pytest.approx(jsonl[5]["train/loss"])
  assert by_step[6]["eval/bleu"] == pytest.approx(jsonl[6]["eval/bleu"])
  assert by_step[6]["eval/samples/_type"] == "table-file"
  assert by_step[6]["eval/samples/nrows"] == 4  # training.num_logged_samples.
  table = json.loads((pathlib.Path(first) / "files" / by_step[6]["eval/samples/path"]).read_text())
  assert table["columns"] == ["source", "reference", "hypothesis"] and len(table["data"]) == 4
  assert logged["config"]["model"]["d_model"] == 32
  # A second start of the run (more steps) continues the same W&B run from the checkpoint.
  loop.train_and_evaluate(_config(8, wandb_project="tests"), str(tmp_path))
  assert (tmp_path / metrics.WANDB_RUN_ID_FILE).read_text().strip() == run_id
  runs = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*")))
  assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs)
  second = [r for r in runs if r != first][0]
  steps = [h["_step"] for h in observability_helpers.read_wandb_offline_run(second)["history"]]
  assert steps == [8]  # Resumed at the checkpoint of step 6: only the new steps.
