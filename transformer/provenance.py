"""What a run ran on: package versions, devices, processes and the code's git commit.

`environment()` is recorded in a run's config_history.jsonl entries and summary.json and logged
at start, so that a result can be traced to the code and the software stack that produced it.
"""

import functools
import importlib.metadata
import os
import platform
import subprocess

import jax

# Distributions whose versions decide a run's numbers (missing ones are left out).
PACKAGES = ("transformer", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu",
            "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets", "sentencepiece",
            "sacrebleu", "numpy")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_versions() -> dict[str, str]:
  """{distribution: version} of the installed PACKAGES, plus "python"."""
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return versions


def _git(*args: str) -> str | None:
  try:
    result = subprocess.run(["git", "-C", _REPO_ROOT, *args], capture_output=True, text=True,
                            timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip()


@functools.cache
def git_commit() -> dict | None:
  """{"commit", "dirty"} of the checkout the package runs from, or None (an installed copy).

  "dirty" is True when tracked files differ from the commit (untracked files do not count).
  """
  if not os.path.exists(os.path.join(_REPO_ROOT, ".git")):
    return None
  commit = _git("rev-parse", "HEAD")
  if not commit:
    return None
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": bool(status) if status is not None else None}


def devices() -> dict:
  """The platform, device kind and counts of this run (global and of this process)."""
  local = jax.local_devices()
  return {
      "platform": local[0].platform,
      "device_kind": local[0].device_kind,
      "device_count": jax.device_count(),
      "local_device_count": len(local),
      "process_count": jax.process_count(),
  }


def environment() -> dict:
  """{"packages", "devices", "git"}: see `package_versions`, `devices`, `git_commit`."""
  return {"packages": package_versions(), "devices": devices(), "git": git_commit()}


def describe(record: dict) -> str:
  """One log line of an `environment()` record."""
  packages = record["packages"]
  git = record["git"]
  code = (f"git {git['commit'][:12]}{' (modified)' if git['dirty'] else ''}" if git
          else "an installed copy (no git checkout)")
  stack = ", ".join(f"{name} {packages[name]}" for name in packages if name != "transformer")
  dev = record["devices"]
  kind = dev["device_kind"] if dev["device_kind"].lower() == dev["platform"] else (
      f"{dev['device_kind']} ({dev['platform']})")
  return (f"transformer {packages.get('transformer', '?')} from {code}; {stack}; "
          f"{dev['device_count']} {kind} device(s) in {dev['process_count']} process(es)")
