"""A run on Cloud Storage: `--workdir=gs://bucket/run` end to end against a local GCS emulator.

train.py, a resume, `python -m transformer.evaluate` and `python -m transformer.average` each run
as their own process (as a user runs them) with the emulator's address in the environment:
STORAGE_EMULATOR_HOST for gcsfs (etils.epath) and google-cloud-storage (TensorBoard events),
TENSORSTORE_GCS_HTTP_URL and a test token for tensorstore (orbax's array store). Only the
address differs from a real bucket; README ("Cloud Storage workdirs") lists what is untested.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from training_helpers import REPO_ROOT

BUCKET = "transformer-test"
_STEPS = ["--config=configs/copy.py", "--config.training.num_train_steps=20",
          "--config.training.checkpoint_every_steps=10", "--config.training.log_every_steps=5",
          "--config.training.eval_every_steps=10", "--config.training.bleu_every_steps=20"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_env():
  """The environment of a process that talks to a fresh emulator (stopped after the module)."""
  port = _free_port()
  emulator = subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, "tests", "gcs_emulator.py"), str(port), BUCKET],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://localhost:{port}"
  deadline = time.monotonic() + 60
  while True:
    try:
      urllib.request.urlopen(url + "/", timeout=1)
      break
    except OSError:
      if time.monotonic() > deadline or emulator.poll() is not None:
        emulator.kill()
        raise RuntimeError(f"the GCS emulator did not start on port {port}")
      time.sleep(0.2)
  # The emulator has no storage-control API, which gcsfs's bucket-type lookup would retry on
  # every call: gcsfs's plain (non-HNS) client, as for an ordinary bucket.
  env = dict(os.environ, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
             GOOGLE_AUTH_TOKEN_FOR_TESTING="test-token", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
             JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  yield env
  emulator.terminate()
  emulator.wait(timeout=30)


def _run(env, *args: str) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, f"{args} failed:\n{result.stderr[-3000:]}"
  return result


@pytest.fixture(scope="module")
def bucket(gcs_env):
  """A gcsfs filesystem on the emulator, for the test's own reads (not shared with the code)."""
  from gcsfs import core  # pylint: disable=g-import-not-at-top  # The plain, non-HNS client.
  return core.GCSFileSystem(endpoint_url=gcs_env["STORAGE_EMULATOR_HOST"], token="anon",
                            skip_instance_cache=True, use_listings_cache=False)


def _records(bucket, workdir: str) -> list[dict]:
  return [json.loads(line) for line in bucket.cat(f"{workdir}/metrics.jsonl").splitlines()]


def _names(bucket, path: str) -> list[str]:
  return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in bucket.ls(path, detail=False))


def test_a_run_on_cloud_storage_trains_resumes_exactly_evaluates_and_averages(gcs_env, bucket):
  workdir = f"gs://{BUCKET}/runs/copy"
  _run(gcs_env, "train.py", f"--workdir={workdir}", *_STEPS)
  first = _records(bucket, workdir)
  assert {"checkpoints", "config.json", "config_history.jsonl", "hypotheses", "metrics.jsonl",
          "summary.json", "tensorboard"} <= set(_names(bucket, workdir))
  assert _names(bucket, f"{workdir}/checkpoints") == ["10", "20"]
  assert _names(bucket, f"{workdir}/tensorboard")[0].startswith("events.out.tfevents")
  assert "validation_step20.txt" in _names(bucket, f"{workdir}/hypotheses")
  summary = json.loads(bucket.cat(f"{workdir}/summary.json"))
  assert summary["workdir"] == workdir and summary["final_step"] == 20

  # Lose the last checkpoint (as a kill before it was written would): the rerun of the same
  # command resumes from step 10, replays steps 11-20 and logs exactly what the first run did.
  bucket.rm(f"{workdir}/checkpoints/20", recursive=True)
  rerun = _run(gcs_env, "train.py", f"--workdir={workdir}", *_STEPS)
  assert "Resumed from the checkpoint at step 10" in rerun.stderr
  second = _records(bucket, workdir)
  train = lambda records: [r for r in records if "train/loss" in r]  # noqa: E731
  assert [(r["step"], r["train/loss"]) for r in train(second)] == [
      (r["step"], r["train/loss"]) for r in train(first)]
  replaced = bucket.cat(f"{workdir}/metrics.jsonl.superseded").splitlines()
  assert replaced and all(json.loads(line)["step"] > 10 for line in replaced)

  scores = json.loads(_run(gcs_env, "-m", "transformer.evaluate", f"--workdir={workdir}",
                           "--split=test", "--json").stdout)
  assert scores["steps"] == [20]
  assert scores["test"]["loss"] == pytest.approx(summary["test/loss"], rel=1e-5)
  assert scores["test"]["hypotheses"].startswith(f"{workdir}/hypotheses/test_eval_step20")

  averaged = f"gs://{BUCKET}/runs/copy_avg"
  _run(gcs_env, "-m", "transformer.average", f"--workdir={workdir}", f"--output={averaged}",
       "--last_k=2")
  provenance = json.loads(bucket.cat(f"{averaged}/averaged_from.json"))
  assert provenance["workdir"] == workdir and provenance["steps"] == [10, 20]
  averaged_scores = json.loads(_run(gcs_env, "-m", "transformer.evaluate",
                                    f"--workdir={averaged}", "--split=test", "--json").stdout)
  assert averaged_scores["steps"] == [20]


def test_gcs_paths_without_a_bucket_or_gcsfs_are_refused_with_the_fix(monkeypatch):
  from transformer import storage  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="names no bucket"):
    storage.normalize("gs:///")
  assert storage.normalize("gs://bucket/run/") == "gs://bucket/run"
  real_find_spec = storage.importlib.util.find_spec
  monkeypatch.setattr(storage.importlib.util, "find_spec",
                      lambda name: None if name == "gcsfs" else real_find_spec(name))
  fix = r"needs gcsfs: pip install 'transformer\[gcs\]' \(or pip install gcsfs\)"
  with pytest.raises(ValueError, match=fix):
    storage.normalize("gs://bucket/run")
