"""Loads a trained run from its workdir for translation and evaluation: the saved config, the
tokenizer, and the latest, a given, or the average of the last k checkpoints (Vaswani et al.,
2017, section 6.1), laid out on the devices present now. Loading writes nothing: an unreadable
latest checkpoint is skipped (with a warning) but left where it is.
"""

import dataclasses
import os

from absl import logging

from transformer import checkpointing
from transformer import data as data_lib
from transformer.data import pipeline as data_pipeline
from transformer import sharding
from transformer.training import builder
from transformer.training import loop
from transformer.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A restored run, ready for inference."""

  workdir: str  # The run directory.
  config: loop.RunConfig  # Its saved config.
  tokenizer: data_lib.Tokenizer  # Its tokenizer.
  setup: builder.TrainSetup  # Model graph, mesh and jitted steps on the current devices.
  state: state_lib.TrainState  # Restored (possibly averaged) state.
  steps: list[int]  # Checkpoint steps the parameters come from.


def check_decoding_flags(*, beam_size: int | None, batch_size: int, average_last_k: int) -> None:
  """Raises loop.UsageError for a command-line value that cannot decode anything."""
  for name, value in (("beam_size", beam_size), ("batch_size", batch_size),
                      ("average_last_k", average_last_k)):
    if value is not None and value < 1:
      raise loop.UsageError(f"--{name} must be >= 1, got {value}")


def load_run(workdir: str, *, step: int | None = None, average_last_k: int = 1) -> LoadedRun:
  """Restores a run for inference on all current devices (data-parallel mesh).

  Args:
    workdir: a directory written by `train.py`.
    step: a checkpoint step; None means the latest (or the last k when averaging).
    average_last_k: average the parameters of the last k checkpoints (requires step=None).

  Returns:
    The LoadedRun.

  Raises:
    loop.UsageError: bad arguments.
    loop.TrainingError: no run, no checkpoint or no readable checkpoint in `workdir`.
  """
  workdir = os.path.abspath(workdir)
  if average_last_k < 1:
    raise loop.UsageError(f"average_last_k must be >= 1, got {average_last_k}")
  if step is not None and average_last_k > 1:
    raise loop.UsageError("give either a checkpoint step or average_last_k > 1, not both")
  try:
    saved = checkpointing.read_config_json(workdir)
  except ValueError as e:
    raise loop.TrainingError(f"{workdir}/config.json is not valid JSON: {e}") from e
  if saved is None:
    raise loop.TrainingError(f"{workdir} has no config.json: it is not a train.py workdir")
  cfg = loop.parse_config(saved)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  available = checkpointing.steps_of(checkpoint_dir)
  if not available:
    raise loop.TrainingError(f"{checkpoint_dir} holds no checkpoint yet")
  if (not cfg.data.dataset.startswith("synthetic/")
      and not os.path.exists(os.path.join(workdir, data_pipeline.TOKENIZER_FILE))
      and not os.path.isdir(os.path.join(workdir, data_lib.tokenizer.MARIAN_DIR))):
    raise loop.TrainingError(f"{workdir} has no {data_pipeline.TOKENIZER_FILE}: the run's vocabulary "
                             "is missing")
  tokenizer = data_lib.get_tokenizer(cfg.data, workdir, task=cfg.training.task)
  model_config = builder.make_model_config(
      cfg.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
      bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
      input_vocab_size=tokenizer.source_vocab_size,
  )
  setup = builder.make_train_setup(
      task=cfg.training.task, model_config=model_config, optimizer_config=cfg.optimizer,
      num_train_steps=cfg.training.num_train_steps,
      label_smoothing=cfg.training.label_smoothing, seed=cfg.training.seed,
      mesh=sharding.make_mesh(sharding.MeshConfig()),
  )
  checkpointer = checkpointing.Checkpointer(
      checkpoint_dir, max_to_keep=cfg.training.max_checkpoints_to_keep,
      best_metric=cfg.training.best_metric, read_only=True,
  )
  try:
    abstract = setup.abstract_state_with_shardings()
    if average_last_k > 1:
      try:
        state, steps = checkpointer.average_last_k(average_last_k, abstract)
      except ValueError as e:
        raise loop.TrainingError(str(e)) from e
    else:
      if step is not None and step not in available:
        raise loop.UsageError(f"no checkpoint at step {step} in {workdir}; have {available}")
      try:
        state, restored_step = checkpointer.restore(abstract, step=step)
      except checkpointing.UnreadableCheckpointError as e:
        raise loop.TrainingError(str(e)) from e
      except Exception as e:  # A given step that does not restore: say why in one line.
        if step is None:
          raise
        raise loop.TrainingError(f"the checkpoint at step {step} in {workdir} cannot be "
                                 f"restored: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
      if state is None:
        raise loop.TrainingError(f"no readable checkpoint in {workdir}/checkpoints")
      steps = [restored_step]
  finally:
    checkpointer.close()
  logging.info("Loaded %s from checkpoint step(s) %s.", workdir, steps)
  return LoadedRun(workdir=workdir, config=cfg, tokenizer=tokenizer, setup=setup, state=state,
                   steps=steps)
