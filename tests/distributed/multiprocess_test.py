"""Real multi-process training: 2 processes x 2 CPU devices (gloo collectives over 127.0.0.1)
train exactly like 1 process x 4 devices, their checkpoint continues in 1 process, and a SIGTERM
to one of them stops both at one checkpoint.

Every run is a `train.py` subprocess with its own device count (conftest's 8 emulated devices
are for this process only). Each process runs in its own session with a hard deadline; on any
failure or timeout every process of the run is killed (SIGKILL to its process group) and the
tails of their logs go into the assertion message.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE_S = 240  # Per run (all of its processes); the three runs take ~30-60 s each.

# The copy task, 1+1 layers of width 32, 20 steps of 16x16 tokens per global batch; BLEU on 12
# validation sentences at step 20 (every process needs all hypotheses), checkpoints every 10.
# Adam's eps is 1e-3 (not 1e-9): the attention key biases have an exactly zero gradient
# (softmax ignores a constant added to a row of logits); with eps=1e-9 Adam divides the float
# rounding noise of those zero gradients (which differs between a gloo all-reduce and an
# in-process one) by ~eps and turns it into O(learning rate) steps. (Measured with eps=1e-9:
# after 20 steps the key biases differ by up to 4e-3, every other parameter by < 2e-7.)
COPY_ARGS = [
    "--config=configs/copy.py", "--config.model.d_model=32", "--config.model.d_ff=64",
    "--config.model.num_heads=2", "--config.model.num_encoder_layers=1",
    "--config.model.num_decoder_layers=1", "--config.model.dropout_rate=0.1",
    "--config.optimizer.eps=1e-3", "--config.data.tokens_per_batch=256",
    "--config.data.eval_batch_size=64", "--config.training.log_every_steps=5",
    "--config.training.eval_every_steps=20", "--config.training.bleu_every_steps=20",
    "--config.training.bleu_num_examples=12", "--config.training.checkpoint_every_steps=10",
    "--config.training.max_checkpoints_to_keep=5", "--config.training.test_split=",
    "--config.decoding.beam_size=2", "--config.decoding.max_extra_length=2",
]


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices: int, cache_dir: str) -> dict[str, str]:
  """A clean environment: CPU only, `num_devices` emulated devices, no cluster variables."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS"))}
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"]),
             JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _tail(path: str, chars: int = 2500) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()[-chars:]


class _Run:
  """The processes of one `train.py` run; `wait` enforces the deadline and cleans up."""

  def __init__(self, logdir, name, workdir, args, *, num_processes, devices_per_process,
               cache_dir):
    self.name = name
    self.processes, self.logs = [], []
    port = _free_port()
    try:
      for i in range(num_processes):
        cluster = ([f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={num_processes}", f"--process_id={i}"]
                   if num_processes > 1 else [])
        log = os.path.join(logdir, f"{name}.{i}.log")
        with open(log, "w") as out:
          self.processes.append(subprocess.Popen(
              [sys.executable, "train.py", f"--workdir={workdir}", *args, *cluster],
              cwd=REPO, env=_env(devices_per_process, cache_dir), stdout=out,
              stderr=subprocess.STDOUT, start_new_session=True))
        self.logs.append(log)
    except BaseException:
      self.kill()
      raise

  def kill(self):
    for p in self.processes:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)  # Its own session: the process and its children.
        except ProcessLookupError:
          pass
    for p in self.processes:
      p.wait(timeout=30)

  def wait(self, deadline_s=DEADLINE_S, exit_status=0):
    """Waits for every process to exit with `exit_status`; kills them all on timeout or on the
    first other status."""
    end = time.monotonic() + deadline_s
    problem = None
    try:
      while problem is None and any(p.poll() is None for p in self.processes):
        failed = [i for i, p in enumerate(self.processes) if p.poll() not in (None, exit_status)]
        if failed:
          problem = f"process {failed[0]} exited with {self.processes[failed[0]].returncode}"
        elif time.monotonic() > end:
          problem = f"timed out after {deadline_s} s"
        else:
          time.sleep(0.2)
      if problem is None and any(p.returncode != exit_status for p in self.processes):
        problem = f"exit codes {[p.returncode for p in self.processes]}"
    finally:
      self.kill()
    if problem:
      details = "\n".join(f"--- {self.name} process {i} (last lines of {log}):\n{_tail(log)}"
                          for i, log in enumerate(self.logs))
      raise AssertionError(f"run {self.name!r}: {problem}\n{details}")
    return [_tail(log, 100_000) for log in self.logs]


def _params(workdir: str, step: int) -> dict[str, np.ndarray]:
  """Parameters of a checkpoint as numpy arrays by tree path (on no particular devices: the
  checkpoint's may not exist in this process)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  params = checkpointer.restore(path, restore_args=as_numpy)["params"]
  return {jax.tree_util.keystr(keys): np.asarray(leaf)
          for keys, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _assert_params_close(actual: dict, expected: dict, what: str):
  assert actual.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-5,
                               err_msg=f"{what}: {key}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A JAX compilation cache for all runs of this module (later runs reuse the programs)."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
  """2 processes x 2 devices for 20 steps, and (at the same time) 1 process x 4 devices for 25
  steps with a checkpoint at 20."""
  root = tmp_path_factory.mktemp("multiprocess")
  two, one = str(root / "two_processes"), str(root / "one_process")
  run_two = _Run(str(root), "two_processes", two,
                 COPY_ARGS + ["--config.training.num_train_steps=20"], num_processes=2,
                 devices_per_process=2, cache_dir=cache)
  try:
    run_one = _Run(str(root), "one_process", one,
                   COPY_ARGS + ["--config.training.num_train_steps=25"], num_processes=1,
                   devices_per_process=4, cache_dir=cache)
  except BaseException:
    run_two.kill()
    raise
  try:
    logs_two = run_two.wait()
  except BaseException:
    run_one.kill()
    raise
  logs_one = run_one.wait()
  return {"root": root, "cache": cache, "two": two, "one": one, "logs_two": logs_two,
          "logs_one": logs_one}


def test_two_processes_train_like_one_process_with_four_devices(runs):
  two, one = runs["two"], runs["one"]
  assert "2 process(es)" in runs["logs_two"][0] and "block 0 of 2" in runs["logs_two"][0]
  _assert_params_close(_params(two, 20), _params(one, 20), "step 20")

  # Only process 0 reports: the progress bar, the summary and INFO logs are not in process 1's
  # output; files that exist once per run were written once.
  assert "Run summary" in runs["logs_two"][0] and "Run summary" not in runs["logs_two"][1]
  assert "step/s" not in runs["logs_two"][1] and "Mesh {" not in runs["logs_two"][1]
  records_two, records_one = _records(two), _records(one)
  assert [r["step"] for r in records_two if "train/loss" in r] == [5, 10, 15, 20]
  for key in ("train/loss", "eval/loss", "eval/bleu"):
    two_by_step = {r["step"]: r[key] for r in records_two if key in r}
    one_by_step = {r["step"]: r[key] for r in records_one if key in r and r["step"] <= 20}
    assert two_by_step and two_by_step == pytest.approx(one_by_step, rel=1e-4, abs=1e-4), key

  # BLEU saw all 12 hypotheses, including the rows process 1 fed: the same as one process.
  hypotheses = os.path.join("hypotheses", "validation_step20.txt")
  with open(os.path.join(two, hypotheses)) as a, open(os.path.join(one, hypotheses)) as b:
    lines = a.read().splitlines()
    assert len(lines) == 12 and lines == b.read().splitlines()
  data_files = os.listdir(os.path.join(two, "checkpoints", "20", "data"))
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_files)


def test_two_process_checkpoint_continues_in_one_process(runs):
  """The 2-process checkpoint of step 20 (state, and the data position saved per process)
  resumes in 1 process x 4 devices; 5 more steps equal the uninterrupted 1-process run."""
  two = runs["two"]
  run = _Run(str(runs["root"]), "resumed", two,
             COPY_ARGS + ["--config.training.num_train_steps=25"], num_processes=1,
             devices_per_process=4, cache_dir=runs["cache"])
  log = run.wait()[0]
  assert "Resumed from the checkpoint at step 20" in log
  assert "saved by 2 process(es); continuing it in 1" in log
  assert [r["step"] for r in _records(two) if "train/loss" in r] == [5, 10, 15, 20, 25]
  _assert_params_close(_params(two, 25), _params(runs["one"], 25), "step 25")


def _override(args: list[str], **fields) -> list[str]:
  """`args` with --config.training.FIELD=VALUE replaced (or added) for each keyword."""
  names = {f"--config.training.{name}=" for name in fields}
  kept = [a for a in args if not any(a.startswith(n) for n in names)]
  return kept + [f"--config.training.{name}={value}" for name, value in fields.items()]


def test_sigterm_to_one_process_stops_every_process_at_one_checkpoint(tmp_path, cache):
  """A preemption notice to process 1 only: jax's preemption service has both processes save
  the same step (a collective save) and exit cleanly, instead of one waiting for the other."""
  workdir = str(tmp_path / "preempted")
  args = _override(COPY_ARGS, num_train_steps=1000, eval_every_steps=1000, bleu_every_steps=0,
                   checkpoint_every_steps=1000)
  run = _Run(str(tmp_path), "preempted", workdir, args, num_processes=2, devices_per_process=2,
             cache_dir=cache)
  try:
    end = time.monotonic() + DEADLINE_S
    while not re.search(r"\| [1-9]\d*/1000 ", _tail(run.logs[0])):  # Past the first step.
      assert time.monotonic() < end and all(p.poll() is None for p in run.processes), (
          "the run did not start training:\n" + _tail(run.logs[0]) + _tail(run.logs[1]))
      time.sleep(0.2)
    run.processes[1].send_signal(signal.SIGTERM)
  except BaseException:
    run.kill()
    raise
  logs = run.wait(exit_status=75)  # Stopped with a checkpoint saved: rerun to resume.
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  step = summary["final_step"]
  assert summary["stopped_by"] == "SIGTERM" and 1 < step < 1000
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
  data_files = os.listdir(os.path.join(workdir, "checkpoints", str(step), "data"))
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_files)
  assert f"saving a checkpoint at step {step} on every process" in logs[0]
