"""What a rerun keeps of a workdir: whether a directory may hold a run, whether the config may
continue its checkpoints, the config changes since the checkpoint (logged, and kept in a
history), an optimizer state carried over to a changed optimizer transformation, the best
metric so far, and the summary of a run that has already finished.
"""

import datetime
import errno
import fnmatch
import json
import os
from collections.abc import Mapping

import jax
from absl import logging

from transformer import checkpointing
from transformer import data as data_lib
from transformer import distributed
from transformer import metrics as metrics_lib
from transformer import provenance
from transformer import storage
from transformer.training import errors
from transformer.training import optimizers
from transformer.training import run_config
from transformer.training.run_config import CONFIG_SECTIONS

CONFIG_HISTORY = "config_history.jsonl"  # One line per start whose config changed.
SUMMARY = "summary.json"
# Marks a parameters-only directory written by `python -m transformer.average`: its source run
# and the averaged steps.
AVERAGED_FROM = "averaged_from.json"
# What a start of train.py may leave before its config.json exists (it is written only once
# the run is restored); a non-empty directory holding anything else is not a run.
_LEFTOVERS = frozenset({"sentencepiece.model", "metrics.jsonl", "metrics.jsonl.superseded",
                        "tensorboard", "hypotheses", "corrupt_checkpoints", CONFIG_HISTORY})


# Config fields whose change makes existing checkpoints unusable (other parameter shapes, other
# vocabulary, other optimizer-state structure). Everything else may change between restarts
# (number of steps, learning rate, dropout, eval cadence, mesh, dtype).
STRUCTURAL_FIELDS = {
    "model": None,  # None: every field of the section, except those in RUNTIME_MODEL_FIELDS.
    "training": ("task",),
    "data": ("dataset", "source_lang", "target_lang", "vocab_size"),
    "optimizer": ("name", "grad_accum_steps"),
}
RUNTIME_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype", "attention_impl")


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
  """Structural differences between two config dicts, as 'section.field: saved -> current'."""
  diffs = []
  for section, fields in STRUCTURAL_FIELDS.items():
    old, new = dict(saved.get(section, {})), dict(current.get(section, {}))
    if fields is None:
      names = sorted((set(old) | set(new)) - set(RUNTIME_MODEL_FIELDS))
    else:
      names = fields
    for name in names:
      if old.get(name) != new.get(name):
        diffs.append(f"{section}.{name}: {old.get(name)!r} -> {new.get(name)!r}")
  return diffs




class IncompatibleCheckpointError(ValueError):
  """The workdir holds a run whose config cannot be continued with the current config."""


def check_compatible(saved_config: Mapping, current_config: Mapping, workdir: str) -> None:
  """Refuses to continue a workdir whose saved run has another model/data/optimizer shape.

  Raises:
    IncompatibleCheckpointError: listing each differing field.
  """
  diffs = config_differences(saved_config, current_config)
  if diffs:
    raise IncompatibleCheckpointError(
        f"workdir {workdir} holds a run with an incompatible config; refusing to overwrite it. "
        "Differences (saved -> requested):\n  " + "\n  ".join(diffs) + "\n"
        "Use a new --workdir, or restore the saved values (see "
        f"{os.path.join(workdir, 'config.json')})."
    )


def _is_run_config(path: str) -> bool:
  """Whether `path` is a config.json written by train.py (a JSON object of the six sections)."""
  try:
    config = json.loads(storage.read_text(path))
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and set(config) == set(CONFIG_SECTIONS)


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that train.py must not write into.

  A `gs://bucket/dir` workdir is checked the same way, except for write permission (Cloud
  Storage tells that only by writing).

  Raises:
    ValueError: `workdir` is a file, an unsupported URL, cannot be written, or is a non-empty
      directory that holds no train.py run (the files of a user are never overwritten).
  """
  workdir = storage.normalize(workdir)
  if storage.isfile(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory")
  if not storage.is_remote(workdir):
    existing = _nearest_existing(workdir)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
      raise ValueError(f"--workdir {workdir} cannot be written ({existing} is read-only or not "
                       "a directory)")
  if not storage.isdir(workdir):
    return
  if (storage.isdir(os.path.join(workdir, "checkpoints"))
      or _is_run_config(os.path.join(workdir, "config.json"))):
    return
  foreign = [name for name in storage.listdir(workdir) if name not in _LEFTOVERS
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


def _last_environment(history_path: str) -> dict | None:
  """The environment of the last entry of a config history (None: no history, or none)."""
  if not storage.exists(history_path):
    return None
  lines = storage.read_text(history_path).splitlines()
  try:
    return json.loads(lines[-1]).get("environment") if lines else None
  except ValueError:  # A torn last line.
    return None


def record_config(workdir: str, config: Mapping, *, step: int, saved: Mapping | None) -> dict:
  """Writes config.json and, when the config is new or changed, a line of config_history.jsonl.

  Each changed field is logged ("optimizer.learning_rate 0.0031 -> 0.001 from step 6000"). The
  history keeps every config a run has used and every environment it ran in: {"from_step",
  "time", "changes", "config", "environment" (`provenance.environment()`: versions, devices,
  git commit)} per line, added when the config or the environment differs from the last line
  (a run from before the history existed first gets its saved config, from_step null). Call on
  process 0 only, after the run was restored.

  Returns:
    The changes, as `config_changes` (empty for a new run or an unchanged config).
  """
  changes = {} if saved is None else config_changes(saved, config)
  for name, (old, new) in changes.items():
    logging.warning("Config change: %s %r -> %r from step %d.", name, old, new, step)
  path = os.path.join(workdir, CONFIG_HISTORY)
  entries = []
  if saved is not None and not storage.exists(path):
    entries.append({"from_step": None, "time": None, "changes": {}, "config": dict(saved)})
  environment = provenance.environment()
  if saved is None or changes or environment != _last_environment(path):
    entries.append({"from_step": step,
                    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "changes": changes, "config": dict(config), "environment": environment})
  if entries:
    storage.append(path, "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries))
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
    summary = json.loads(storage.read_text(os.path.join(workdir, SUMMARY)))
  except (OSError, ValueError):
    return None
  if (isinstance(summary, dict) and summary.get("final_step") == step
      and summary.get("stopped_by") in (None, "early_stopping")):
    return summary
  return None


def saved_config(workdir: str, reader: checkpointing.Checkpointer | None) -> dict | None:
  """The config the workdir's checkpoints were saved with (the latest's, else config.json)."""
  if reader is None or not reader.all_steps():
    return None
  try:
    saved = reader.saved_config()
  except Exception:  # An unreadable latest checkpoint: restore falls back and says why.
    saved = None
  return saved or checkpointing.read_config_json(workdir)


def refuse_incompatible(workdir: str, config_dict: dict, saved: dict | None) -> None:
  """Refuses to continue a workdir whose checkpoints come from another model/data shape.

  Without checkpoints there is nothing to protect (a run that failed before its first save may
  be restarted with any config).

  Raises:
    errors.UsageError: listing each differing field.
  """
  if saved is None:
    return
  try:
    check_compatible(saved, config_dict, workdir)
  except IncompatibleCheckpointError as e:
    raise errors.UsageError(str(e)) from e


def refuse_params_only(workdir: str) -> None:
  """Refuses to train in a parameters-only directory written by `python -m transformer.average`
  (it holds no optimizer state and no data position to continue from).

  Raises:
    errors.UsageError: naming the run the parameters were averaged from.
  """
  workdir = storage.normalize(workdir)
  path = os.path.join(workdir, AVERAGED_FROM)
  if not storage.exists(path):
    return
  try:
    source = json.loads(storage.read_text(path)).get("workdir")
  except (OSError, ValueError, AttributeError):
    source = None
  where = f"continue the source run {source}" if source else "continue the source run"
  raise errors.UsageError(
      f"{workdir} holds averaged parameters only (written by python -m "
      f"transformer.average); it cannot be trained further (it has no optimizer state). "
      f"Translate or evaluate it, {where}, or use a new --workdir.")


def adopt_imported_model(config_dict: dict, workdir: str) -> dict:
  """For a workdir written by `python -m transformer.convert --from_hf`, the model section and
  vocabulary size of its config.json replace the requested ones (the other sections, the data
  included, come from --config): fine-tuning keeps the imported model's shape."""
  workdir = storage.normalize(workdir)
  if not storage.isdir(os.path.join(workdir, data_lib.tokenizer.MARIAN_DIR)):
    return config_dict
  saved = checkpointing.read_config_json(workdir)
  if saved is None:
    return config_dict
  differing = sorted(k for k in set(config_dict["model"]) | set(saved["model"])
                     if config_dict["model"].get(k) != saved["model"].get(k))
  if differing:
    logging.warning(
        "Imported model in %s: config.model comes from its config.json; these requested model "
        "fields are not used: %s", workdir,
        ", ".join(f"{k}={config_dict['model'].get(k)!r} (kept {saved['model'].get(k)!r})"
                  for k in differing))
  data = dict(config_dict["data"], vocab_size=saved["data"]["vocab_size"])
  return dict(config_dict, model=dict(saved["model"]), data=data)


def best_so_far(jsonl_path: str, metric: str,
                up_to_step: int) -> tuple[tuple[float, int] | None, int]:
  """Best `metric` already in metrics.jsonl (for resumed runs), and evaluations since it.

  Returns:
    ((value, step) of the best record or None, number of later records of `metric`).
  """
  if not storage.exists(jsonl_path):
    return None, 0
  values = {}  # By step: a record written twice (before supersession existed) counts once.
  for record in metrics_lib.read_jsonl(jsonl_path):
    value = record.get(metric)
    if isinstance(value, (int, float)) and record["step"] <= up_to_step:
      values[record["step"]] = value
  best, since_best = None, 0
  for step, value in sorted(values.items()):
    if metrics_lib.improves(metric, value, best):
      best, since_best = (value, step), 0
    else:
      since_best += 1
  return best, since_best


def write_failure(error: OSError, workdir: str,
                  checkpointer: checkpointing.Checkpointer | None) -> errors.TrainingError:
  """The error for a failed write (a full disk): which file, and which checkpoint is intact."""
  what = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
  verb = "write" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) else (
      "read or write")
  try:
    if checkpointer is not None:
      checkpointer.wait()
  except Exception:  # The failed write may be this checkpoint's; the finished ones count.
    pass
  steps = checkpointing.steps_of(os.path.join(workdir, "checkpoints"))
  intact = (f"the last checkpoint, step {steps[-1]} in {workdir}/checkpoints, is intact"
            if steps else "no checkpoint was saved yet")
  return errors.TrainingError(f"could not {verb} {error.filename or 'a file'} ({what}); "
                              f"{intact}. Free space (or fix the cause) and rerun the same "
                              "command to resume.")


def _saved_target(setup, saved_optimizer: dict | None, current_optimizer: dict,
                  num_train_steps: int):
  """Restore target of checkpoints saved under another optimizer transformation (e.g.
  gradient clipping switched on), or None when the current state structure fits them."""
  if saved_optimizer is None or saved_optimizer == current_optimizer:
    return None
  try:
    saved_cfg = run_config.to_dataclass(optimizers.OptimizerConfig, saved_optimizer,
                                        "optimizer")
  except (TypeError, ValueError):
    return None
  saved = setup.abstract_state_with_optimizer(saved_cfg, num_train_steps)
  current = setup.abstract_state_with_shardings()
  if jax.tree.structure(saved.opt_state) == jax.tree.structure(current.opt_state):
    return None
  return saved


def _carry_over_optimizer_state(setup, state, step: int):
  """`state` (saved under another optimizer transformation) in the current one's structure."""
  fresh = setup.init_state()
  opt_state, kept, initialized = carry_over_opt_state(state.opt_state, fresh.opt_state)
  logging.warning(
      "The optimizer transformation changed since the checkpoint at step %d: parameters and "
      "%s restored; newly initialized: %s.", step,
      ", ".join(kept) if kept else "no optimizer state",
      ", ".join(initialized) if initialized else "nothing")
  merged = fresh.replace(step=state.step, params=state.params, model_state=state.model_state,
                         rng=state.rng, opt_state=opt_state)
  return jax.device_put(merged, setup.state_shardings)


def restore_train_state(reader: checkpointing.Checkpointer | None, setup, *,
                        saved: dict | None, config_dict: dict, num_train_steps: int,
                        data_iterator):
  """(state, step) of the latest readable checkpoint, or (None, None) without one.

  The data iterator is moved to the checkpoint's position; a checkpoint saved under another
  optimizer transformation keeps its parameters and the optimizer state that still fits.

  Raises:
    errors.TrainingError: no checkpoint can be restored.
  """
  if reader is None:
    return None, None
  saved_target = _saved_target(setup, (saved or {}).get("optimizer"), config_dict["optimizer"],
                               num_train_steps)
  target = saved_target or setup.abstract_state_with_shardings()
  try:
    state, step = reader.restore(target, data_iterator=data_iterator)
  except checkpointing.UnreadableCheckpointError as e:
    raise errors.TrainingError(f"{e}. Use a new --workdir to start afresh.") from e
  if state is not None and saved_target is not None:
    state = _carry_over_optimizer_state(setup, state, step)
  return state, step


def check_shared_workdir(workdir: str) -> None:
  """Refuses a multi-process run whose processes do not share the workdir (after process 0
  wrote config.json)."""
  if jax.process_count() == 1:
    return
  distributed.barrier("config_json_written")
  sees = distributed.gather_from_all(storage.exists(os.path.join(workdir, "config.json")))
  blind = [i for i, seen in enumerate(sees) if not seen]
  if blind:
    raise errors.TrainingError(
        f"process(es) {blind} cannot see {workdir}/config.json, which process 0 has "
        "written: the workdir must be on a filesystem that every host shares (NFS, Filestore, "
        "a gcsfuse-mounted bucket), at the same path."
    )


def stopped_or_finished(workdir: str, step: int, last: int, *, patience: int,
                        evals_since_best: int, best_metric: str):
  """(last step, stop reason, kept summary) of a rerun: a run that already stopped early trains
  no further, and a run that finished keeps its summary.json (None when there is more to do)."""
  stopped_by = None
  if patience and evals_since_best >= patience and step < last:
    logging.info("This run already stopped early (no improvement of %s in %d evaluations); "
                 "not training further.", best_metric, evals_since_best)
    last, stopped_by = step, "early_stopping"
  finished = finished_summary(workdir, step) if step >= last else None
  if finished is not None:
    logging.info("The run in %s already finished at step %d; its summary.json is kept.",
                 workdir, step)
  return last, stopped_by, finished


def write_summary(workdir: str, summary: dict) -> None:
  """Writes summary.json atomically and prints the summary (call on process 0)."""
  storage.write_atomic(os.path.join(workdir, SUMMARY), json.dumps(summary, indent=2))
  print_summary(summary)


def print_summary(summary: dict) -> None:
  lines = [f"{k}: {v}" for k, v in summary.items()]
  print("\n".join(["", "Run summary"] + [f"  {line}" for line in lines]), flush=True)
