"""Setting up a run: config -> mesh -> tokenizer -> model config -> model (and optimizer).

`setup_run` is the one place where a run's pieces are put together; training
(`transformer.training.loop`) asks for the optimizer and the train step, inference
(`transformer.training.inference`: translate, evaluate, `Translator`) does not.
"""

import dataclasses
import os

import jax
from absl import logging

from transformer import data as data_lib
from transformer import distributed
from transformer import sharding
from transformer import storage
from transformer.training import builder
from transformer.training import errors
from transformer.training import evaluation
from transformer.training import run_config
from transformer.training import tasks


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """The static pieces of a run on the current devices."""

  workdir: str  # The run directory (absolute).
  config: run_config.RunConfig  # The typed config.
  task: tasks.Task  # The model family.
  tokenizer: data_lib.Tokenizer  # The run's vocabulary.
  setup: builder.ModelSetup  # A TrainSetup when set up for training.

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.setup.mesh

  def data_placement(self) -> dict:
    """The pipeline arguments that place this process's rows: its block of every batch (the
    process index and count unless processes share rows), and the data-parallel shards."""
    block, num_blocks = sharding.process_batch_block(self.mesh)
    return dict(layout=self.task.layout, process_index=block, process_count=num_blocks,
                num_data_shards=self.mesh.shape["data"] * self.mesh.shape["fsdp"])

  def train_iterator(self):
    """The checkpointable iterator of this process's training batches."""
    return data_lib.make_train_iterator(self.config.data, self.tokenizer,
                                        **self.data_placement())

  def eval_dataset(self, split: str) -> data_lib.EvalDataset:
    """Every example of `split`, in order (this process's rows)."""
    return data_lib.make_eval_dataset(self.config.data, self.tokenizer, split,
                                      **self.data_placement())

  def translator(self, *, beam_size: int | None = None,
                 length_penalty: float | None = None) -> evaluation.BatchTranslator:
    """Jitted beam search of this model; settings default to the run's `config.decoding`,
    the output limit is data.max_len + decoding.max_extra_length."""
    decoding = self.config.decoding
    return evaluation.BatchTranslator.create(
        self.setup, beam_size=decoding.beam_size if beam_size is None else beam_size,
        alpha=decoding.length_penalty if length_penalty is None else length_penalty,
        max_decode_len=self.config.data.max_len + decoding.max_extra_length,
        early_stopping=decoding.early_stopping)


def _get_tokenizer(cfg: run_config.RunConfig, workdir: str) -> data_lib.Tokenizer:
  return data_lib.get_tokenizer(cfg.data, workdir, layout=cfg.task.layout)


def train_or_load_tokenizer(cfg: run_config.RunConfig, workdir: str) -> data_lib.Tokenizer:
  """The run's tokenizer: process 0 trains and writes it if needed, the others then load it.

  Raises:
    errors.TrainingError: the data cannot be read or the stored tokenizer does not fit.
  """
  error = None
  tokenizer = None
  if distributed.is_main_process():
    try:
      tokenizer = _get_tokenizer(cfg, workdir)
    except (ValueError, OSError) as e:
      error = e
  if distributed.broadcast_from_main(error is not None):
    raise errors.TrainingError(
        f"cannot build the data pipeline of {cfg.data.dataset!r}: "
        + (str(error) if error else "process 0 failed to build the tokenizer (see its log)")
    ) from error
  if tokenizer is None:
    try:
      tokenizer = _get_tokenizer(cfg, workdir)
    except (ValueError, OSError) as e:
      raise errors.TrainingError(f"cannot load the tokenizer process 0 wrote: {e}") from e
  return tokenizer


def load_tokenizer(cfg: run_config.RunConfig, workdir: str) -> data_lib.Tokenizer:
  """The tokenizer a trained run stored (never trains one).

  Raises:
    errors.TrainingError: the workdir has no tokenizer.
  """
  if (not cfg.data.dataset.startswith("synthetic/")
      and not storage.exists(os.path.join(workdir, data_lib.TOKENIZER_FILE))
      and not storage.isdir(os.path.join(workdir, data_lib.tokenizer.MARIAN_DIR))):
    raise errors.TrainingError(f"{workdir} has no {data_lib.TOKENIZER_FILE}: the run's "
                               "vocabulary is missing")
  try:
    return _get_tokenizer(cfg, workdir)
  except (ValueError, OSError) as e:
    raise errors.TrainingError(f"cannot load the tokenizer of {workdir}: {e}") from e


def make_mesh(mesh_config: sharding.MeshConfig) -> jax.sharding.Mesh:
  """The device mesh of `config.mesh` (errors.UsageError when it does not fit the devices)."""
  try:
    return sharding.make_mesh(mesh_config)
  except ValueError as e:
    raise errors.UsageError(f"config.mesh: {e}") from e


def setup_run(cfg: run_config.RunConfig, workdir: str, *, training: bool,
              mesh: jax.sharding.Mesh | None = None) -> RunSetup:
  """Puts a run together on the current devices.

  Args:
    cfg: the typed run config.
    workdir: the run directory.
    training: build the optimizer, state initializer and train step (a TrainSetup), and train
      the tokenizer when the workdir has none; otherwise a ModelSetup and the stored tokenizer.
    mesh: the device mesh; default `config.mesh` for training and a data-parallel mesh over
      every device for inference.

  Returns:
    The RunSetup.

  Raises:
    errors.UsageError: the mesh does not fit the devices.
    errors.TrainingError: the tokenizer cannot be built or loaded.
  """
  workdir = storage.normalize(workdir)
  if mesh is None:
    mesh = make_mesh(cfg.mesh if training else sharding.MeshConfig())
  task = cfg.task
  tokenizer = (train_or_load_tokenizer if training else load_tokenizer)(cfg, workdir)
  model_config = builder.make_model_config(
      cfg.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
      bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
      input_vocab_size=tokenizer.source_vocab_size,
  )
  common = dict(task=task, model_config=model_config, mesh=mesh,
                label_smoothing=cfg.training.label_smoothing)
  if training:
    setup = builder.make_train_setup(**common, optimizer_config=cfg.optimizer,
                                     num_train_steps=cfg.training.num_train_steps,
                                     seed=cfg.training.seed)
  else:
    setup = builder.make_model_setup(**common)
  try:
    block, num_blocks = sharding.process_batch_block(mesh)
  except ValueError as e:
    raise errors.UsageError(f"config.mesh: {e}") from e
  logging.info("Model %s, vocabulary %d. Mesh %s over %d devices (%s) in %d process(es); this "
               "process feeds block %d of %d of every batch.", task.name, tokenizer.vocab_size,
               dict(mesh.shape), mesh.size, jax.devices()[0].platform, jax.process_count(),
               block, num_blocks)
  return RunSetup(workdir=workdir, config=cfg, task=task, tokenizer=tokenizer, setup=setup)
