"""Checkpoints with orbax: train state, data-iterator position and config, saved asynchronously.

One `orbax.checkpoint.CheckpointManager` per run directory keeps the last K checkpoints plus
the best one by a validation metric. A checkpoint holds four items:
  state:     the whole TrainState (params, opt_state, step, rng), restored straight into the
             target shardings, so it loads onto any number of devices;
  data:      the grain iterator state (JSON, one file per process; a checkpoint written by N
             processes continues in any other number, see `_iterator_state_of_other_process_count`);
  config:    the resolved run config (JSON), checked against the config of a restarted run;
  integrity: checksums of every array of the state, verified on restore (see `state_integrity`).
A state holding NaN or infinite values is never saved. A checkpoint that fails to restore
(partial, corrupt, checksums that do not match, no data-iterator state) is moved aside to
`<workdir>/corrupt_checkpoints/` and the one before it is used instead, with a warning; a
read-only Checkpointer (translation, evaluation) falls back the same way but moves nothing.

In a multi-process run every process creates the same Checkpointer on the same (shared)
directory and calls every save and restore, as orbax expects: each process writes the array
shards it owns, orbax's primary process (0) writes metadata and finalizes the step.
"""

import json
import os
import time
from collections.abc import Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from transformer import metrics as metrics_lib
from transformer import storage

class UnreadableCheckpointError(RuntimeError):
  """No checkpoint of a directory could be restored."""


class CorruptCheckpointError(ValueError):
  """A checkpoint's files were read but do not hold what was saved."""


class _DropMissingMetricWarning:
  """Silences orbax's per-save warning for checkpoints saved between evaluations, and its
  notice that a read-only manager is read-only."""

  def filter(self, record) -> bool:
    message = record.getMessage()
    return "did not provide metrics" not in message and "is read only" not in message


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """(2,) uint32: sum and position-weighted sum of x's elements read as unsigned integers."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)
  # Integer sums wrap modulo 2^32 exactly, so the result does not depend on the sharding.
  positions = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                    jnp.sum(words * positions, dtype=jnp.uint32)])


@jax.jit
def _checksums_and_finite(state):
  checksums = jax.tree.map(_leaf_checksum, state)
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats])) if floats else True
  return checksums, finite


def state_integrity(state) -> dict:
  """Checksums of every array of `state` and whether all its floats are finite (on device).

  Returns:
    {"checksums": {leaf path: [sum, weighted sum]}, "finite": bool}, JSON-able.
  """
  checksums, finite = jax.device_get(_checksums_and_finite(state))
  by_path = {jax.tree_util.keystr(path): [int(v) for v in value]
             for path, value in jax.tree_util.tree_leaves_with_path(checksums)}
  return {"checksums": by_path, "finite": bool(finite)}


def verify_integrity(state, saved: Mapping | None) -> None:
  """Raises CorruptCheckpointError unless `state` is finite and matches the saved checksums.

  Args:
    state: a restored state.
    saved: the `state_integrity` saved with it; None (a checkpoint of an older version) checks
      finiteness only.
  """
  now = state_integrity(state)
  if saved is not None:
    expected = saved["checksums"]
    common = sorted(set(expected) & set(now["checksums"]))
    differing = [path for path in common if expected[path] != now["checksums"][path]]
    if not common or differing:
      raise CorruptCheckpointError(
          f"the data of {len(differing) if common else 'all'} of {len(expected)} arrays "
          f"({', '.join(differing[:3]) or 'no common array'}) does not match the checksums "
          "saved with it")
  if not now["finite"]:
    raise CorruptCheckpointError("its state holds NaN or infinite values")


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
      read_only: bool = False,
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
      read_only: never write, create, move or delete anything (restoring only); unreadable
        checkpoints are skipped with a warning and listed in `unreadable`.
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    self.directory = storage.normalize(directory)
    self.best_metric = best_metric
    self.read_only = read_only
    self.unreadable = []  # (step, reason) of checkpoints the last `restore` skipped.
    self._corrupt_dir = corrupt_dir or os.path.join(
        os.path.dirname(self.directory), "corrupt_checkpoints"
    )
    options = self._manager_options(max_to_keep, best_metric, async_save, read_only)
    absl_logger = logging.get_absl_logger()
    if not any(isinstance(f, _DropMissingMetricWarning) for f in absl_logger.filters):
      absl_logger.addFilter(_DropMissingMetricWarning())
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "config", "integrity")
    )

  @staticmethod
  def _manager_options(max_to_keep: int, best_metric: str | None, async_save: bool,
                       read_only: bool) -> ocp.CheckpointManagerOptions:
    """Orbax options: keep the latest `max_to_keep` and the best by `best_metric` (see __init__)."""
    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric is not None:
      sign = -1.0 if metrics_lib.is_lower_better(best_metric) else 1.0

      def best_fn(metrics):
        return sign * float(metrics[best_metric])

      policies.append(
          checkpoint_managers.BestN(
              get_metric_fn=best_fn, n=1, keep_checkpoints_without_metrics=False
          )
      )
    if read_only:
      # Only the options orbax does not override (with a warning each) for read-only managers.
      return ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                          enable_async_checkpointing=False)
    return ocp.CheckpointManagerOptions(
        best_fn=best_fn,
        best_mode="max",
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=True,
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
      True if a save was started, False if `step` is already saved or `state` is not finite
      (a checkpoint with NaN or infinite values is never written).
    """
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only")
    if step in self._manager.all_steps():
      return False
    integrity = state_integrity(state)
    if not integrity["finite"]:
      logging.warning("Not saving a checkpoint at step %d: the state holds NaN or infinite "
                      "values.", step)
      return False
    items = {"state": ocp.args.StandardSave(state), "integrity": ocp.args.JsonSave(integrity)}
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

    Every restored state is verified: its checksums must match those saved with it, its floats
    must be finite, and (when `data_iterator` is given) the checkpoint must hold an iterator
    state. When the latest checkpoint cannot be read (partial write, deleted or corrupt files)
    but an earlier one can, the unreadable ones are moved to the corrupt-checkpoint directory
    (listed in `unreadable` and left in place when read-only) and the earlier one is used, with
    a warning. If no checkpoint can be read, nothing is moved (the cause is then more likely a
    code or config change than corruption) and an error is raised.

    Args:
      abstract_state: TrainState of jax.ShapeDtypeStruct with `.sharding` (from
        `jax.eval_shape` plus shardings) describing where arrays go.
      step: a specific step; None means the latest readable one. A specific step that cannot
        be read raises instead of falling back.
      data_iterator: grain iterator whose state is set from the checkpoint. When the saved
        state has another layout (data.num_workers changed), the iterator is moved to batch
        `step` instead: training draws one batch per step.

    Returns:
      (state, step), or (None, None) when the directory has no checkpoint.

    Raises:
      UnreadableCheckpointError: no checkpoint could be restored.
    """
    self.unreadable = []
    if step is not None:
      return self._restore_step(step, abstract_state, data_iterator), step
    failures = []
    for candidate in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._restore_step(candidate, abstract_state, data_iterator)
      except Exception as e:  # Any read failure means "this checkpoint is unusable".
        first_line = str(e).splitlines()[0][:300] if str(e) else ""
        failures.append((candidate, f"{type(e).__name__}: {first_line}"))
        continue
      self.unreadable = failures
      if self.read_only:
        for bad_step, reason in failures:
          logging.warning("Checkpoint at step %d cannot be restored (%s); falling back to step "
                          "%d.", bad_step, reason, candidate)
      else:
        self.move_aside(failures, candidate)
      return state, candidate
    if failures:
      raise UnreadableCheckpointError(
          f"no checkpoint in {self.directory} can be restored (they may come from another code "
          "version or model shape); nothing was moved or deleted. Errors: "
          + "; ".join(f"step {s}: {r}" for s, r in failures)
      )
    return None, None

  def move_aside(self, failures: Sequence[tuple[int, str]], used_step: int) -> None:
    """Moves the unreadable checkpoints `failures` ((step, reason), from `restore` of a
    read-only Checkpointer or this one) to the corrupt directory, with a warning each."""
    for bad_step, reason in failures:
      if bad_step not in self._manager.all_steps():
        continue
      moved_to = self._move_aside(bad_step)
      logging.warning("Checkpoint at step %d cannot be restored (%s); moved it to %s and "
                      "falling back to step %d.", bad_step, reason, moved_to, used_step)

  def _restore_step(self, step, abstract_state, data_iterator):
    step_dir = os.path.join(self.directory, str(step))
    iterator_state = None
    if data_iterator is not None:
      iterator_state = _saved_iterator_state(os.path.join(step_dir, "data"), step)
    items = {"state": _state_restore_args(abstract_state)}
    has_integrity = storage.isdir(os.path.join(step_dir, "integrity"))
    if has_integrity:
      items["integrity"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    verify_integrity(restored["state"], restored["integrity"] if has_integrity else None)
    if iterator_state is not None:
      _set_iterator_state(data_iterator, iterator_state, step)
    return restored["state"]

  def _move_aside(self, step: int) -> str:
    """Moves an unreadable step to the corrupt directory (process 0; the others wait)."""
    self._manager.wait_until_finished()
    target = os.path.join(self._corrupt_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      storage.move(os.path.join(self.directory, str(step)), target)
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
    if not storage.isdir(path):
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
    return self.average(steps[-k:], abstract_state)

  def average(self, steps: Sequence[int], abstract_state) -> tuple[object, list[int]]:
    """Parameters averaged over the checkpoints at `steps` (float32 sums, then cast back).

    Args:
      steps: checkpoint steps to average (any order, no repeats).
      abstract_state: as in `restore`.

    Returns:
      (state whose params are the average and whose other fields come from the latest of
      `steps`, the averaged steps ascending).

    Raises:
      ValueError: if `steps` is empty, repeats a step or names a step that is not saved.
    """
    steps = sorted(steps)
    missing = sorted(set(steps) - set(self.all_steps()))
    if not steps or missing or len(set(steps)) != len(steps):
      raise ValueError(
          f"cannot average the checkpoints at steps {steps}: {self.directory} has "
          f"{self.all_steps()}" + (f", not {missing}" if missing else "")
      )
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


def _state_restore_args(abstract_state):
  """Restore arguments of the `state` item: the whole TrainState, or a part of it (a state
  without `opt_state`, such as the parameters of an InferenceState: the rest is not read)."""
  if hasattr(abstract_state, "opt_state"):
    return ocp.args.StandardRestore(abstract_state)
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract_state)
  return ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args,
                                partial_restore=True)


def _iterator_file(process_index: int, process_count: int) -> str:
  """Name of one process's iterator state in a checkpoint's `data/` (grain's own naming)."""
  return f"process_{process_index}-of-{process_count}.json"


def _saved_iterator_state(item_dir: str, step: int) -> dict | None:
  """This process's data-iterator state in a checkpoint's `data/` directory.

  Returns:
    The state, or None for a step-0 checkpoint saved without one (an imported model): its data
    starts at batch 0 anyway.

  Raises:
    CorruptCheckpointError: a later checkpoint holds no iterator state (resuming would silently
      restart the data at batch 0).
  """
  own = os.path.join(item_dir, _iterator_file(jax.process_index(), jax.process_count()))
  if storage.exists(own):
    return json.loads(storage.read_text(own))
  if not storage.isdir(item_dir):
    if step == 0:
      return None
    raise CorruptCheckpointError(f"{item_dir} (the data-iterator state) is missing")
  return _iterator_state_of_other_process_count(item_dir)


def _same_layout(a, b) -> bool:
  """Whether two iterator states have the same nesting and keys (values may differ)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same_layout(a[k], b[k]) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same_layout(x, y) for x, y in zip(a, b))
  return not isinstance(a, (dict, list)) and not isinstance(b, (dict, list))


def _set_iterator_state(data_iterator, saved: dict, step: int) -> None:
  """Sets a saved iterator state, or moves to batch `step` if the iterator's layout changed."""
  if _same_layout(saved, data_iterator.get_state()):
    data_iterator.set_state(saved)
    return
  logging.warning("The data-iterator state of step %d has another layout than this run's "
                  "iterator (data.num_workers changed?); continuing at batch %d of the same "
                  "batch plan.", step, step)
  grain.experimental.set_next_index(data_iterator, step)


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
  for name in storage.listdir(item_dir):
    if name.startswith("process_") and name.endswith(".json"):
      states[name] = json.loads(storage.read_text(os.path.join(item_dir, name)))
  if not states:
    raise CorruptCheckpointError(f"{item_dir} holds no data-iterator state")
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
    storage.write_atomic(path, json.dumps(dict(config), indent=2, sort_keys=True))
  return path


def read_config_json(workdir: str) -> dict | None:
  """The config saved by `write_config_json`, or None if there is none."""
  path = os.path.join(workdir, "config.json")
  if not storage.exists(path):
    return None
  return json.loads(storage.read_text(path))


def steps_of(directory: str) -> Sequence[int]:
  """Finished checkpoint steps under `directory` without opening a manager (ascending).

  On Cloud Storage a step directory exists while it is written; orbax marks finished ones.
  """
  if storage.is_remote(directory):
    return sorted(ocp.path.step.checkpoint_steps(directory))
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
