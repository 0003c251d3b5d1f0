"""Using a trained run: load it from its workdir, evaluate a split (`transformer.Translator`
translates with it).

A run loads with the saved config, the tokenizer, and the parameters of the latest, a given, or
the average of the last k checkpoints (Vaswani et al., 2017, section 6.1), laid out on the
devices present now. Only the parameters are read (no optimizer is built, no optimizer state
is restored). Loading writes nothing: an unreadable latest checkpoint is skipped (with a
warning) but left where it is. `python -m transformer.translate` and `python -m
transformer.evaluate` are thin command lines over these functions.
"""

import dataclasses
import os

from absl import logging

from transformer import checkpointing
from transformer import metrics as metrics_lib
from transformer import storage
from transformer.training import errors
from transformer.training import evaluation
from transformer.training import run_config
from transformer.training import runs
from transformer.training import state as state_lib

@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A restored run, ready for inference."""

  run: runs.RunSetup  # Config, task, tokenizer and model setup on the current devices.
  state: state_lib.InferenceState  # Restored (possibly averaged) parameters.
  steps: list[int]  # Checkpoint steps the parameters come from.

  @property
  def workdir(self) -> str:
    return self.run.workdir

  @property
  def config(self) -> run_config.RunConfig:
    return self.run.config

  @property
  def tokenizer(self):
    return self.run.tokenizer

  @property
  def setup(self):
    return self.run.setup


def check_decoding_flags(*, beam_size: int | None, batch_size: int, average_last_k: int) -> None:
  """Raises errors.UsageError for a command-line value that cannot decode anything."""
  for name, value in (("beam_size", beam_size), ("batch_size", batch_size),
                      ("average_last_k", average_last_k)):
    if value is not None and value < 1:
      raise errors.UsageError(f"--{name} must be >= 1, got {value}")


def _saved_run_config(workdir: str) -> run_config.RunConfig:
  try:
    saved = checkpointing.read_config_json(workdir)
  except ValueError as e:
    raise errors.TrainingError(f"{workdir}/config.json is not valid JSON: {e}") from e
  if saved is None:
    raise errors.TrainingError(f"{workdir} has no config.json: it is not a train.py workdir")
  return run_config.parse_config(saved)


def _restore_one(checkpointer, abstract, workdir: str, step: int | None):
  """(state, step) of one checkpoint: `step`, or the latest readable one."""
  try:
    state, restored_step = checkpointer.restore(abstract, step=step)
  except checkpointing.UnreadableCheckpointError as e:
    raise errors.TrainingError(str(e)) from e
  except Exception as e:  # A given step that does not restore: say why in one line.
    if step is None:
      raise
    raise errors.TrainingError(f"the checkpoint at step {step} in {workdir} cannot be "
                               f"restored: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
  if state is None:
    raise errors.TrainingError(f"no readable checkpoint in {workdir}/checkpoints")
  return state, restored_step


def load_run(workdir: str, *, step: int | None = None, average_last_k: int = 1) -> LoadedRun:
  """Restores a run's parameters for inference on all current devices (data-parallel mesh).

  Args:
    workdir: a directory written by `train.py`.
    step: a checkpoint step; None means the latest (or the last k when averaging).
    average_last_k: average the parameters of the last k checkpoints (requires step=None).

  Returns:
    The LoadedRun.

  Raises:
    errors.UsageError: bad arguments.
    errors.TrainingError: no run, no checkpoint or no readable checkpoint in `workdir`.
  """
  try:
    workdir = storage.normalize(workdir)
  except ValueError as e:
    raise errors.UsageError(str(e)) from e
  if average_last_k < 1:
    raise errors.UsageError(f"average_last_k must be >= 1, got {average_last_k}")
  if step is not None and average_last_k > 1:
    raise errors.UsageError("give either a checkpoint step or average_last_k > 1, not both")
  cfg = _saved_run_config(workdir)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  available = checkpointing.steps_of(checkpoint_dir)
  if not available:
    raise errors.TrainingError(f"{checkpoint_dir} holds no checkpoint yet")
  if step is not None and step not in available:
    raise errors.UsageError(f"no checkpoint at step {step} in {workdir}; have {available}")
  run = runs.setup_run(cfg, workdir, training=False)
  checkpointer = checkpointing.Checkpointer(
      checkpoint_dir, max_to_keep=cfg.training.max_checkpoints_to_keep,
      best_metric=cfg.training.best_metric, read_only=True,
  )
  try:
    abstract = run.setup.abstract_inference_state_with_shardings()
    if average_last_k > 1:
      try:
        state, steps = checkpointer.average_last_k(average_last_k, abstract)
      except ValueError as e:
        raise errors.TrainingError(str(e)) from e
    else:
      state, restored_step = _restore_one(checkpointer, abstract, workdir, step)
      steps = [restored_step]
  finally:
    checkpointer.close()
  logging.info("Loaded %s from checkpoint step(s) %s.", workdir, steps)
  return LoadedRun(run=run, state=state, steps=steps)


def hypotheses_path(loaded: LoadedRun, name: str, *, beam_size: int,
                    length_penalty: float) -> str:
  """<workdir>/hypotheses/<name>_eval_[avgK_]step<S>_beam<K>_lp<alpha>.txt: the checkpoints and
  decoding settings are in the name, so a beam / length-penalty sweep keeps every output."""
  suffix = f"avg{len(loaded.steps)}_" if len(loaded.steps) > 1 else ""
  filename = f"{name}_eval_{suffix}step{loaded.steps[-1]}_beam{beam_size}_lp{length_penalty:g}.txt"
  return os.path.join(loaded.workdir, "hypotheses", filename)


def write_lines(path: str, lines: list[str]) -> None:
  """Writes one line per entry (newlines inside an entry become spaces); local or gs://."""
  storage.write_atomic(path, "".join(line.replace("\n", " ") + "\n" for line in lines))


def evaluate_run(loaded: LoadedRun, split: str, *, beam_size: int | None = None,
                 length_penalty: float | None = None) -> dict:
  """Loss / accuracy / perplexity and, for a task that decodes, BLEU (cased and lowercased) and
  chrF with their sacreBLEU signatures, of `loaded` on the run's `split`.

  Returns:
    {"<split>/loss", ..., "<split>/bleu", "<split>/bleu_signature", ..., "<split>/hypotheses"
    (the translations' file), "steps"}.
  """
  run, decoding = loaded.run, loaded.config.decoding
  beam_size = decoding.beam_size if beam_size is None else beam_size
  length_penalty = decoding.length_penalty if length_penalty is None else length_penalty
  dataset = run.eval_dataset(split)
  results = evaluation.evaluate_loss(run.setup, loaded.state, dataset, prefix=split)
  if run.task.decodes:
    translator = run.translator(beam_size=beam_size, length_penalty=length_penalty)
    path = hypotheses_path(loaded, split, beam_size=beam_size, length_penalty=length_penalty)
    _, hypotheses = evaluation.evaluate_bleu(translator, loaded.state, dataset, run.tokenizer,
                                             output_path=path)
    scores = metrics_lib.score_translations(hypotheses, dataset.references)
    results.update({f"{split}/{name}": value for name, value in scores.items()})
    results[f"{split}/hypotheses"] = path
  results["steps"] = loaded.steps
  return results
