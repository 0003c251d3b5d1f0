"""The command lines: train.py resumes exactly after SIGKILL, trains on Multi30k end to end,
names unknown config fields, exits with documented statuses (2 bad input, 75 stopped and
saved, 130 a second Ctrl-C); transformer.translate and transformer.evaluate use the workdir."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K = os.path.join(os.path.dirname(REPO), "shared", "data", "multi30k")

# The copy task with a 1+1-layer width-32 model on one device: seconds per run.
TINY_COPY = [
    "--config=configs/copy.py", "--config.model.d_model=32", "--config.model.d_ff=64",
    "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
    "--config.mesh.data=1", "--config.data.tokens_per_batch=256",
    "--config.data.eval_batch_size=32", "--config.training.log_every_steps=5",
    "--config.training.eval_every_steps=1000", "--config.training.bleu_every_steps=0",
    "--config.training.checkpoint_every_steps=5", "--config.training.test_split=",
    "--config.model.dropout_rate=0.1",
]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """One JAX persistent compilation cache for the subprocesses of this module: the restarted
  and the uninterrupted runs compile identical programs, so later processes load them."""
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  _ENV.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  yield
  for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
    _ENV.pop(key)


# Subprocesses see one CPU device (conftest emulates 8 for this process): programs compile
# faster, and training and translation then share one mesh and one compilation cache.
_ENV = dict(os.environ, XLA_FLAGS=" ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")))


def _run(args, timeout=300, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=_ENV, **kwargs)


def _train_loss_by_step(workdir):
  """Last train/loss written for each step (a resumed run rewrites the steps it replays)."""
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "train/loss" in record:
        losses[record["step"]] = record["train/loss"]
  return losses


def _params(workdir, step):
  state = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                        "state"))
  return state["params"]


def test_sigkill_midway_then_restart_matches_uninterrupted_run(tmp_path):
  steps = 30
  args = TINY_COPY + [f"--config.training.num_train_steps={steps}"]
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  result = _run(["train.py", f"--workdir={straight}", *args])
  assert result.returncode == 0, result.stderr[-3000:]

  process = subprocess.Popen([sys.executable, "train.py", f"--workdir={killed}", *args],
                             cwd=REPO, env=_ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  marker = os.path.join(killed, "checkpoints", "15", "state", "commit_success.txt")
  while time.time() < deadline and process.poll() is None and not os.path.exists(marker):
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert os.path.exists(marker), "the killed run never wrote its step-15 checkpoint"
  assert not os.path.exists(os.path.join(killed, "summary.json")), "killed too late"

  result = _run(["train.py", f"--workdir={killed}", *args])
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(open(os.path.join(killed, "summary.json")).read())
  assert 15 <= summary["start_step"] < steps and summary["final_step"] == steps

  assert _train_loss_by_step(killed) == pytest.approx(_train_loss_by_step(straight), rel=1e-6)
  a, b = _params(straight, steps), _params(killed, steps)
  flat_a, flat_b = _flatten(a), _flatten(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_allclose(flat_b[key], flat_a[key], rtol=1e-6, atol=1e-7, err_msg=key)

  # transformer.evaluate on the finished run, averaging the last 2 checkpoints.
  result = _run(["-m", "transformer.evaluate", f"--workdir={straight}", "--split=validation",
                 "--average_last_k=2", "--beam_size=2", "--json"])
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["steps"] == [25, 30]
  assert 0.0 <= report["validation"]["bleu"] <= 100.0
  assert os.path.basename(report["validation"]["hypotheses"]) == (
      "validation_eval_avg2_step30_beam2_lp0.6.txt")
  assert os.path.exists(report["validation"]["hypotheses"])


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}/{key}"))
    return out
  if isinstance(tree, (list, tuple)):
    out = {}
    for i, value in enumerate(tree):
      out.update(_flatten(value, f"{prefix}/{i}"))
    return out
  return {prefix: np.asarray(tree)}


@pytest.mark.skipif(not os.path.isdir(MULTI30K), reason="needs ../shared/data/multi30k")
def test_multi30k_end_to_end_then_translate(tmp_path):
  workdir = str(tmp_path / "run")
  result = _run([
      "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
      f"--config.data.manual_dir={MULTI30K}", f"--config.data.data_dir={tmp_path / 'tfds'}",
      "--config.training.num_train_steps=30", "--config.training.bleu_every_steps=30",
      "--config.training.checkpoint_every_steps=10", "--config.training.test_split=",
      "--config.data.packing=True",  # One batch shape: one compilation.
      f"--jax_compilation_cache_dir={tmp_path / 'flag_cache'}",  # JAX's options are flags.
  ], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(tmp_path / "flag_cache")  # The flag, not $JAX_COMPILATION_CACHE_DIR, won.
  environment = json.load(open(os.path.join(workdir, "summary.json")))["environment"]
  history = [json.loads(line) for line in open(os.path.join(workdir, "config_history.jsonl"))]
  assert history[-1]["environment"]["packages"] == environment["packages"]
  assert environment["packages"]["jax"] == jax.__version__
  assert environment["devices"]["device_count"] == 1
  assert "Running transformer" in result.stderr and f"jax {jax.__version__}" in result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  bleu = [r["eval/bleu"] for r in records if "eval/bleu" in r]
  assert len(bleu) == 1 and 0.0 <= bleu[0] <= 100.0
  assert any("train/loss" in r for r in records)
  assert os.path.exists(os.path.join(workdir, "sentencepiece.model"))
  assert os.path.exists(os.path.join(workdir, "hypotheses", "validation_step30.txt"))
  assert "Run summary" in result.stdout

  sentences = "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n"
  result = _run(["-m", "transformer.translate", f"--workdir={workdir}", "--beam_size=2"],
                input=sentences)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(result.stdout.splitlines()) == 2


def test_unknown_config_field_lists_valid_fields():
  result = _run(["train.py", "--workdir=/tmp/unused", "--config.training.num_step=3"])
  assert result.returncode == 2
  assert "did you mean config.training.num_train_steps" in result.stderr.lower()
  assert "Valid fields of config.training:" in result.stderr


def test_translate_refuses_a_directory_without_a_run(tmp_path):
  result = _run(["-m", "transformer.translate", f"--workdir={tmp_path}"], input="Hallo\n")
  assert result.returncode == 1
  assert "not a train.py workdir" in result.stderr


def test_usage_errors_exit_2_with_one_line_and_write_nothing(tmp_path):
  result = _run(["train.py", f"--workdir={tmp_path / 'a'}", "--config=configs/nonexistent.py"])
  assert result.returncode == 2
  assert result.stderr == "error: --config file configs/nonexistent.py does not exist\n"
  result = _run(["train.py", f"--workdir={tmp_path / 'b'}", *TINY_COPY,
                 "--config.model.d_model=0"])
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.splitlines()[-1] == (
      "error: config.model: d_model must be a positive integer, got 0")
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def _wait_for(predicate, process, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None and not predicate():
    time.sleep(0.02)


def _start_training(workdir, stderr_path):
  """A long train.py run, returned once it trains (its first metrics are written)."""
  with open(stderr_path, "w") as stderr:
    process = subprocess.Popen(
        [sys.executable, "train.py", f"--workdir={workdir}", *TINY_COPY,
         "--config.training.num_train_steps=100000",
         "--config.training.checkpoint_every_steps=50000"],
        cwd=REPO, env=_ENV, stdout=subprocess.DEVNULL, stderr=stderr)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  _wait_for(lambda: os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0, process)
  return process


def test_sigterm_exits_75_with_a_checkpoint_and_a_second_ctrl_c_exits_130_in_one_line(tmp_path):
  log = tmp_path / "stderr.txt"
  process = _start_training(str(tmp_path / "term"), log)
  process.send_signal(signal.SIGTERM)
  process.wait(timeout=120)
  assert process.returncode == 75, log.read_text()[-3000:]
  assert "rerun the same command to resume (exit status 75)" in log.read_text()
  assert os.listdir(tmp_path / "term" / "checkpoints")

  process = _start_training(str(tmp_path / "int"), log)
  process.send_signal(signal.SIGINT)
  # Once the first Ctrl-C is handled (a checkpoint is being saved), the second.
  _wait_for(lambda: "Received SIGINT" in log.read_text(), process)
  process.send_signal(signal.SIGINT)
  process.wait(timeout=120)
  stderr = log.read_text()
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr
  assert stderr.splitlines()[-1].startswith("error: interrupted again: stopped at once")
