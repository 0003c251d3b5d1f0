"""Checkpoints with orbax: train state, data-iterator position and config, saved asynchronously.

One `orbax.checkpoint.CheckpointManager` per run directory keeps the last K checkpoints plus
the best one by a validation metric. A checkpoint holds three items:
  state:  the whole TrainState (params, opt_state, step, rng), restored straight into the
          target shardings, so it loads onto any number of devices;
  data:   the grain iterator state (JSON, one file per process; a checkpoint written by N
          processes continues in any other number, see `_iterator_state_of_other_process_count`);
  config: the resolved run config (JSON), checked against the config of a restarted run.
A checkpoint that fails to restore (partial or corrupt) is moved aside to
`<workdir>/corrupt_checkpoints/` and the one before it is used instead, with a warning.

In a multi-process run every process creates the same Checkpointer on the same (shared)
directory and calls every save and restore, as orbax expects: each process writes the array
shards it owns, orbax's primary process (0) writes metadata and finalizes the step.
"""

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

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


class UnreadableCheckpointError(RuntimeError):
  """No checkpoint of a directory could be restored."""


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


class _DropMissingMetricWarning:
  """Silences orbax's per-save warning for checkpoints saved between evaluations."""

  def filter(self, record) -> bool:
    return "did not provide metrics" not in record.getMessage()


def is_lower_better(metric: str) -> bool:
  """Whether smaller values of `metric` are better (losses, perplexities)."""
  return metric.endswith("loss") or metric.endswith("perplexity")


class Checkpointer:
  """Saves and restores TrainStates in `directory` with one orbax CheckpointManager."""

  def __init__(
      self,
      directory: str,
      *,
      max_to_keep: int,
      best_metric: str | None = "eval/bleu",
      async_save: bool = True,
      corrupt_dir: str | None = None,
  ):
    """Opens (or creates) a checkpoint directory.

    Args:
      directory: where step directories live (e.g. `<workdir>/checkpoints`).
      max_to_keep: number of most recent checkpoints kept.
      best_metric: metric (passed to `save`) whose best checkpoint is also kept; higher is
        better unless the name ends in 'loss' or 'perplexity'. None keeps only the latest.
      async_save: write in a background thread; `wait` blocks until written.
      corrupt_dir: where unreadable checkpoints are moved; default
        `<directory>/../corrupt_checkpoints`.
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    self._corrupt_dir = corrupt_dir or os.path.join(
        os.path.dirname(self.directory), "corrupt_checkpoints"
    )
    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric is not None:
      sign = -1.0 if is_lower_better(best_metric) else 1.0

      def best_fn(metrics):
        return sign * float(metrics[best_metric])

      policies.append(
          checkpoint_managers.BestN(
              get_metric_fn=best_fn, n=1, keep_checkpoints_without_metrics=False
          )
      )
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn,
        best_mode="max",
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=True,
    )
    absl_logger = logging.get_absl_logger()
    if not any(isinstance(f, _DropMissingMetricWarning) for f in absl_logger.filters):
      absl_logger.addFilter(_DropMissingMetricWarning())
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "config")
    )

  def all_steps(self) -> list[int]:
    """Steps of finished checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """Step with the best `best_metric` (the latest if no metric was recorded)."""
    return self._manager.best_step()

  def save(
      self,
      step: int,
      state,
      *,
      data_iterator: grain.DatasetIterator | None = None,
      config: Mapping | None = None,
      metrics: Mapping[str, float] | None = None,
  ) -> bool:
    """Starts writing a checkpoint of `state` at `step` (asynchronously unless disabled).

    Args:
      step: the train step (directory name).
      state: the TrainState pytree (jax.Arrays, any sharding).
      data_iterator: grain iterator whose position is saved with the state.
      config: the resolved config as a JSON-able dict.
      metrics: validation metrics of this state; used to keep the best checkpoint.

    Returns:
      True if a save was started, False if `step` is already saved.
    """
    if step in self._manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(dict(config))
    if metrics is not None and self.best_metric is not None and self.best_metric not in metrics:
      metrics = None
    return self._manager.save(
        step, args=ocp.args.Composite(**items), metrics=dict(metrics) if metrics else None,
        force=True,
    )

  def restore(self, abstract_state, *, step: int | None = None, data_iterator=None):
    """Restores the latest readable checkpoint (or `step`) into `abstract_state`'s shardings.

    When the latest checkpoint cannot be read (partial write, deleted or corrupt files) but an
    earlier one can, the unreadable ones are moved to the corrupt-checkpoint directory and the
    earlier one is used, with a warning. If no checkpoint can be read, nothing is moved (the
    cause is then more likely a code or config change than corruption) and an error is raised.

    Args:
      abstract_state: TrainState of jax.ShapeDtypeStruct with `.sharding` (from
        `jax.eval_shape` plus shardings) describing where arrays go.
      step: a specific step; None means the latest readable one. A specific step that cannot
        be read raises instead of falling back.
      data_iterator: grain iterator whose state is set from the checkpoint (if it has one).

    Returns:
      (state, step), or (None, None) when the directory has no checkpoint.

    Raises:
      UnreadableCheckpointError: no checkpoint could be restored.
    """
    if step is not None:
      return self._restore_step(step, abstract_state, data_iterator), step
    failures = []
    for candidate in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._restore_step(candidate, abstract_state, data_iterator)
      except Exception as e:  # Any read failure means "this checkpoint is unusable".
        first_line = str(e).splitlines()[0] if str(e) else ""
        failures.append((candidate, f"{type(e).__name__}: {first_line}"))
        continue
      for bad_step, reason in failures:
        moved_to = self._move_aside(bad_step)
        logging.warning("Checkpoint at step %d cannot be restored (%s); moved it to %s and "
                        "falling back to step %d.", bad_step, reason, moved_to, candidate)
      return state, candidate
    if failures:
      raise UnreadableCheckpointError(
          f"no checkpoint in {self.directory} can be restored (they may come from another code "
          "version or model shape); nothing was moved or deleted. Errors: "
          + "; ".join(f"step {s}: {r}" for s, r in failures)
      )
    return None, None

  def _restore_step(self, step, abstract_state, data_iterator):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    item_dir = os.path.join(self.directory, str(step), "data")
    data_state = None
    if data_iterator is not None and os.path.isdir(item_dir):
      if os.path.exists(os.path.join(item_dir, _iterator_file(jax.process_index(),
                                                              jax.process_count()))):
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      else:
        data_state = _iterator_state_of_other_process_count(item_dir)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if data_state is not None:
      data_iterator.set_state(data_state)
    return restored["state"]

  def _move_aside(self, step: int) -> str:
    """Moves an unreadable step to the corrupt directory (process 0; the others wait)."""
    self._manager.wait_until_finished()
    target = os.path.join(self._corrupt_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(self._corrupt_dir, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_{step}_moved_aside")
    self._manager.reload()
    return target

  def saved_config(self, step: int | None = None) -> dict | None:
    """The config stored with a checkpoint (latest by default), or None."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    path = os.path.join(self.directory, str(step), "config")
    if not os.path.isdir(path):
      return None
    restored = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
    )
    return dict(restored["config"])

  def average_last_k(self, k: int, abstract_state) -> tuple[object, list[int]]:
    """Parameters averaged over the last k checkpoints (Vaswani et al., 2017, section 6.1).

    Args:
      k: number of most recent checkpoints to average (>= 1).
      abstract_state: as in `restore`.

    Returns:
      (state whose params are the average and whose other fields come from the latest
      checkpoint, the averaged steps).

    Raises:
      ValueError: if fewer than k checkpoints exist.
    """
    steps = self.all_steps()
    if k < 1 or k > len(steps):
      raise ValueError(
          f"average_last_k={k} needs at least {k} checkpoints, but {self.directory} has "
          f"{len(steps)}: {steps}"
      )
    steps = steps[-k:]
    total = None
    for step in steps:
      state = self._restore_step(step, abstract_state, None)
      params = jax.tree.map(lambda x: x.astype(jnp.float32), state.params)
      total = params if total is None else jax.tree.map(jnp.add, total, params)
    averaged = jax.tree.map(
        lambda s, ref: (s / len(steps)).astype(ref.dtype), total, state.params
    )
    return state.replace(params=averaged), steps

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes and releases the manager; calling it again does nothing."""
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


def _iterator_file(process_index: int, process_count: int) -> str:
  """Name of one process's iterator state in a checkpoint's `data/` (grain's own naming)."""
  return f"process_{process_index}-of-{process_count}.json"


def _iterator_state_of_other_process_count(item_dir: str) -> dict:
  """The data-iterator state of a checkpoint written by another number of processes.

  Our iterators count global batches: every process of a run holds the same state (it names
  the next global batch, of which each process reads its own rows), so any process's state
  continues the run under any number of processes. A checkpoint whose processes disagree
  cannot be continued that way.

  Raises:
    ValueError: the states differ between processes, or there is none.
  """
  states = {}
  for name in sorted(os.listdir(item_dir)):
    if name.startswith("process_") and name.endswith(".json"):
      with open(os.path.join(item_dir, name), encoding="utf-8") as f:
        states[name] = json.load(f)
  if not states:
    raise ValueError(f"{item_dir} holds no data-iterator state")
  first = next(iter(states.values()))
  if any(state != first for state in states.values()):
    raise ValueError(
        f"{item_dir} holds different data-iterator states per process ({sorted(states)}), so it "
        f"cannot continue in {jax.process_count()} process(es); resume with the same number of "
        "processes"
    )
  logging.info("Data-iterator state saved by %d process(es); continuing it in %d.", len(states),
               jax.process_count())
  return first


def write_config_json(workdir: str, config: Mapping) -> str:
  """Writes the resolved config to `<workdir>/config.json` (process 0) and returns the path."""
  path = os.path.join(workdir, "config.json")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(dict(config), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  return path


def read_config_json(workdir: str) -> dict | None:
  """The config saved by `write_config_json`, or None if there is none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def abstract_with_shardings(tree, shardings) -> object:
  """jax.ShapeDtypeStruct leaves carrying `shardings` (for restoring onto a given mesh)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def steps_of(directory: str) -> Sequence[int]:
  """Finished checkpoint steps under `directory` without opening a manager (ascending)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
