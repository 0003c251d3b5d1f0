"""What a rerun keeps of a workdir: whether a directory may hold a run, the config changes since
the checkpoint (logged, and kept in a history), an optimizer state carried over to a changed
optimizer transformation, and the summary of a run that has already finished.
"""

import datetime
import fnmatch
import json
import os
from collections.abc import Mapping

import jax
from absl import logging

from transformer import checkpointing

CONFIG_SECTIONS = ("model", "data", "optimizer", "training", "mesh", "decoding")
CONFIG_HISTORY = "config_history.jsonl"  # One line per start whose config changed.
SUMMARY = "summary.json"
# What a start of train.py may leave before its config.json exists (it is written only once
# the run is restored); a non-empty directory holding anything else is not a run.
_LEFTOVERS = frozenset({"sentencepiece.model", "metrics.jsonl", "metrics.jsonl.superseded",
                        "tensorboard", "hypotheses", "corrupt_checkpoints", CONFIG_HISTORY})


def _is_run_config(path: str) -> bool:
  """Whether `path` is a config.json written by train.py (a JSON object of the six sections)."""
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and set(config) == set(CONFIG_SECTIONS)


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that train.py must not write into.

  Raises:
    ValueError: `workdir` is a file, cannot be written, or is a non-empty directory that holds
      no train.py run (the files of a user are never overwritten).
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory")
  existing = _nearest_existing(workdir)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {workdir} cannot be written ({existing} is read-only or not a "
                     "directory)")
  if not os.path.isdir(workdir):
    return
  if (os.path.isdir(os.path.join(workdir, "checkpoints"))
      or _is_run_config(os.path.join(workdir, "config.json"))):
    return
  foreign = [name for name in sorted(os.listdir(workdir)) if name not in _LEFTOVERS
             and not name.endswith(".tmp") and not fnmatch.fnmatch(name, "lengths-*.npy")]
  if foreign:
    raise ValueError(
        f"--workdir {workdir} is not empty and holds no train.py run (it has "
        f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); refusing to write into "
        "it. Use a new or empty directory.")


def _flatten(config: Mapping) -> dict:
  """{"section.field": value} of a config dict, values as JSON would store them."""
  config = json.loads(json.dumps(dict(config)))
  return {f"{section}.{field}": value for section, fields in config.items()
          for field, value in (fields.items() if isinstance(fields, dict) else [("", fields)])}


def config_changes(saved: Mapping, current: Mapping) -> dict[str, list]:
  """{"section.field": [saved value, current value]} of every field that differs."""
  old, new = _flatten(saved), _flatten(current)
  return {name: [old.get(name), new.get(name)] for name in sorted(old.keys() | new.keys())
          if old.get(name) != new.get(name)}


def record_config(workdir: str, config: Mapping, *, step: int, saved: Mapping | None) -> dict:
  """Writes config.json and, when the config is new or changed, a line of config_history.jsonl.

  Each changed field is logged ("optimizer.learning_rate 0.0031 -> 0.001 from step 6000"). The
  history keeps every config a run has used: {"from_step", "time", "changes", "config"} per
  line (a run from before the history existed first gets its saved config, from_step null).
  Call on process 0 only, after the run was restored.

  Returns:
    The changes, as `config_changes` (empty for a new run or an unchanged config).
  """
  changes = {} if saved is None else config_changes(saved, config)
  for name, (old, new) in changes.items():
    logging.warning("Config change: %s %r -> %r from step %d.", name, old, new, step)
  path = os.path.join(workdir, CONFIG_HISTORY)
  entries = []
  if saved is not None and not os.path.exists(path):
    entries.append({"from_step": None, "time": None, "changes": {}, "config": dict(saved)})
  if saved is None or changes:
    entries.append({"from_step": step,
                    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "changes": changes, "config": dict(config)})
  if entries:
    with open(path, "a", encoding="utf-8") as f:
      f.writelines(json.dumps(entry, sort_keys=True) + "\n" for entry in entries)
  checkpointing.write_config_json(workdir, config)
  return changes


def _is_state_node(tree) -> bool:
  """optax states are NamedTuples (ScaleByAdamState, EmptyState, ...)."""
  return isinstance(tree, tuple) and hasattr(tree, "_fields")


def _state_nodes(tree) -> list:
  """The NamedTuple state nodes of an optax state, outermost first."""
  nodes = []
  if _is_state_node(tree):
    nodes.append(tree)
  if isinstance(tree, (tuple, list)):
    for child in tree:
      nodes += _state_nodes(child)
  return nodes


def _signature(node) -> tuple:
  leaves = jax.tree.leaves(node)
  return (type(node).__name__, jax.tree.structure(node),
          tuple((tuple(x.shape), str(x.dtype)) for x in leaves))


def _describe(node) -> str:
  return f"{type(node).__name__}({', '.join(node._fields)})"


def carry_over_opt_state(saved, fresh) -> tuple[object, list[str], list[str]]:
  """The optimizer state of a changed transformation, from the parts of the saved one that fit.

  Every state node of `fresh` (e.g. ScaleByAdamState) whose type and shapes match an unused
  node of `saved` takes the saved values (Adam moments and counts survive adding or removing
  gradient clipping); the rest stays freshly initialized.

  Args:
    saved: the restored optimizer state of the old transformation.
    fresh: a freshly initialized optimizer state of the new transformation.

  Returns:
    (optimizer state of `fresh`'s structure, descriptions of the nodes kept, of those
    initialized afresh).
  """
  available = _state_nodes(saved)
  used = set()
  kept, initialized = [], []

  def rebuild(node):
    if _is_state_node(node):
      for candidate in available:
        if id(candidate) not in used and _signature(candidate) == _signature(node):
          used.update(id(inner) for inner in _state_nodes(candidate))
          kept.append(_describe(node))
          return candidate
      if not jax.tree.leaves(node) or not any(_is_state_node(c) for c in node):
        initialized.append(_describe(node))
        return node
      return type(node)(*[rebuild(child) for child in node])
    if isinstance(node, (tuple, list)):
      return type(node)(rebuild(child) for child in node)
    initialized.append(type(node).__name__)
    return node

  return rebuild(fresh), kept, initialized


def finished_summary(workdir: str, step: int) -> dict | None:
  """The summary.json of a run that finished (or stopped early) at `step`, or None."""
  try:
    with open(os.path.join(workdir, SUMMARY), encoding="utf-8") as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  if (isinstance(summary, dict) and summary.get("final_step") == step
      and summary.get("stopped_by") in (None, "early_stopping")):
    return summary
  return None
