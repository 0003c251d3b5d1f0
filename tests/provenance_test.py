"""The reproducibility record: package versions, devices, processes and the git commit."""

import importlib.metadata
import os
import subprocess

import jax

from transformer import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_record_names_the_stack_the_devices_and_the_commit():
  record = provenance.environment()
  packages = record["packages"]
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
               "tensorflow-datasets"):
    assert packages[name] == importlib.metadata.version(name)
  assert record["devices"] == {
      "platform": "cpu", "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
      "process_count": 1}
  if os.path.exists(os.path.join(REPO, ".git")):  # A checkout (CI: a clone, installed -e).
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert record["git"]["commit"] == head and isinstance(record["git"]["dirty"], bool)
    assert f"from git {head[:12]}" in provenance.describe(record)
  else:
    assert record["git"] is None
  line = provenance.describe(record)
  assert f"jax {packages['jax']}" in line and f"{jax.device_count()} " in line
  assert "in 1 process(es)" in line


def test_outside_a_checkout_the_commit_is_none(tmp_path, monkeypatch):
  provenance.git_commit.cache_clear()
  monkeypatch.setattr(provenance, "_REPO_ROOT", str(tmp_path))
  try:
    assert provenance.git_commit() is None
    record = provenance.environment()
    assert "an installed copy (no git checkout)" in provenance.describe(record)
  finally:
    provenance.git_commit.cache_clear()
