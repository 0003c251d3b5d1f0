"""`train_and_evaluate(config, workdir)`: the training program of the Transformer
(Vaswani et al., 2017): wiring and cadence only; the work happens in the modules it calls.

A run directory holds config.json, config_history.jsonl, sentencepiece.model, checkpoints/,
metrics.jsonl, tensorboard/ (scalars, the config, sample translations, profiles), hypotheses/ and
summary.json (and wandb/, wandb_run_id with training.wandb_project). Rerunning with the same
workdir resumes. Nothing is written before the config, the workdir and the data are checked and the
checkpoint is restored. Only train.py and notebooks import this module.
"""

import dataclasses
import importlib.util
import math
import os
import time

import jax
import ml_collections
from absl import logging

from transformer import checkpointing
from transformer import distributed
from transformer import metrics as metrics_lib
from transformer import model as model_lib
from transformer import provenance
from transformer import sharding
from transformer import storage
from transformer.training import errors
from transformer.training import evaluation
from transformer.training import optimizers
from transformer.training import profiling
from transformer.training import resume
from transformer.training import run_config
from transformer.training import runs
from transformer.training import signals


@dataclasses.dataclass(frozen=True)
class _Due:
  """What happens after a step."""

  log: bool  # Train metrics.
  eval: bool  # Validation loss.
  bleu: bool  # Validation BLEU (with a checkpoint).
  save: bool  # A checkpoint.


def _is_due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def _batch_shape(batch: dict) -> tuple:
  """The array shapes of a host batch: the jitted train step compiles once for each."""
  return tuple(sorted((key, value.shape) for key, value in batch.items()))


def _check_wandb(project: str) -> None:
  """Refuses a W&B project when wandb is not installed (raises errors.UsageError)."""
  if project and importlib.util.find_spec("wandb") is None:
    raise errors.UsageError(
        f"training.wandb_project={project!r} logs to Weights & Biases, which needs the wandb "
        "package on every host: pip install wandb (or set training.wandb_project='' to log to "
        "TensorBoard and metrics.jsonl only)")


class _Run:
  """State of one call of `train_and_evaluate` (kept out of module globals)."""

  def __init__(self, config: ml_collections.ConfigDict | dict, workdir: str, *,
               exit_on_second_interrupt: bool = False):
    try:
      resume.check_workdir(str(workdir))
    except ValueError as e:
      raise errors.UsageError(str(e)) from e
    self.config_dict = resume.adopt_imported_model(
        config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config),
        workdir)
    self.cfg = run_config.parse_config(self.config_dict)
    self.training = self.cfg.training
    _check_wandb(self.training.wandb_project)
    self.workdir = storage.normalize(workdir)
    self.exit_on_second_interrupt = exit_on_second_interrupt
    self.is_main = distributed.is_main_process()
    self.writer = None  # Set by build().
    self.checkpointer = None  # Set by build().
    self.profiler = None  # Set by train().

  def _checkpointer(self, **kwargs) -> checkpointing.Checkpointer:
    return checkpointing.Checkpointer(
        os.path.join(self.workdir, "checkpoints"),
        max_to_keep=self.training.max_checkpoints_to_keep,
        best_metric=self.training.best_metric, **kwargs)

  def build(self):
    """Checks, then mesh, tokenizer, data, model and the restored state; only then writes.

    The checkpoints are read through a read-only Checkpointer; config.json, the config history
    and checkpoints/ are written once the state is restored (or initialized).
    """
    resume.refuse_params_only(self.workdir)
    has_checkpoints = bool(checkpointing.steps_of(os.path.join(self.workdir, "checkpoints")))
    reader = self._checkpointer(read_only=True) if has_checkpoints else None
    try:
      self.saved_config = resume.saved_config(self.workdir, reader)
      resume.refuse_incompatible(self.workdir, self.config_dict, self.saved_config)
      self._build_inputs()
      state, step = resume.restore_train_state(
          reader, self.setup, saved=self.saved_config, config_dict=self.config_dict,
          num_train_steps=self.training.num_train_steps, data_iterator=self.train_iter)
    finally:
      if reader is not None:
        reader.close()
    self.checkpointer = self._checkpointer(async_save=self.training.async_checkpointing)
    if state is None:
      logging.info("No checkpoint in %s: starting from step 0 (seed %d).", self.workdir,
                   self.training.seed)
      state = self.setup.init_state()
    else:
      self.checkpointer.move_aside(reader.unreadable, step)
      logging.info("Resumed from the checkpoint at step %d.", step)
    self.state = state
    self.start_step = int(jax.device_get(state.step))
    self.last_good_step = step
    if self.is_main:
      resume.record_config(self.workdir, self.config_dict, step=self.start_step,
                           saved=self.saved_config)
    resume.check_shared_workdir(self.workdir)
    self.writer = metrics_lib.MetricWriter(self.workdir, enabled=self.is_main,
                                           resume_step=self.start_step)
    self.best, self.evals_since_best = resume.best_so_far(
        self.writer.jsonl_path, self.training.best_metric, self.start_step)

  def _start_logging(self) -> None:
    """The W&B run (process 0, with training.wandb_project), and this start's config as
    TensorBoard text and hparams."""
    project = self.training.wandb_project
    if self.is_main and project:
      try:
        wandb_run = metrics_lib.start_wandb_run(project, self.workdir, self.config_dict)
      except RuntimeError as e:
        raise errors.TrainingError(str(e)) from e
      self.writer.attach_wandb(wandb_run)
    metrics = ["train/loss", "eval/loss", "eval/accuracy", "eval/perplexity"]
    self.writer.write_config(self.start_step, self.config_dict,
                             metrics=metrics + (["eval/bleu"] if self.translator else []))

  def _build_inputs(self):
    """Run setup (tokenizer, model, jitted steps) and data pipelines; nothing is written but
    the tokenizer of a new run."""
    self.run = runs.setup_run(self.cfg, self.workdir, training=True)
    self.setup, self.tokenizer = self.run.setup, self.run.tokenizer
    try:
      self.train_iter = self.run.train_iterator()
      self.eval_data = self.run.eval_dataset("validation")
    except (ValueError, OSError) as e:
      raise errors.TrainingError(
          f"cannot build the data pipeline of {self.cfg.data.dataset!r}: {e}") from e
    counts = model_lib.count_params_by_group(self.setup.abstract_state.params)
    logging.info("Parameters: %s", {k: f"{v:,}" for k, v in counts.items()})
    self.num_params = counts["total"]
    self.translator = self.run.translator() if self.run.task.decodes else None

  def _save(self, step: int, metrics: dict | None = None) -> None:
    if self.checkpointer.save(step, self.state, data_iterator=self.train_iter,
                              config=self.config_dict, metrics=metrics):
      self.last_good_step = step

  def _check_finite(self, sums: dict | None, step: int) -> None:
    """Raises NonFiniteLossError if a loss or gradient since the last check was NaN or inf."""
    if sums is None:
      return
    loss = float(jax.device_get(sums["loss_sum"]))
    grad = float(jax.device_get(sums["grad_norm_sum"]))
    if math.isfinite(loss) and math.isfinite(grad):
      self.verified_step = step
      return
    self.checkpointer.wait()
    raise errors.non_finite_loss(loss, grad, first_step=self.verified_step + 1, step=step,
                                 last_good_step=self.last_good_step,
                                 checkpoints=self.checkpointer.directory)

  def _evaluate(self, step: int, with_bleu: bool) -> tuple[dict[str, float], list]:
    """Validation metrics and (with BLEU) sample translations; tracks the best `best_metric`
    for early stopping."""
    results, hypotheses = evaluation.evaluate_split(
        self.setup, self.state, self.eval_data, prefix="eval",
        translator=self.translator if with_bleu else None, tokenizer=self.tokenizer,
        num_examples=self.training.bleu_num_examples,
        output_path=os.path.join(self.workdir, "hypotheses", f"validation_step{step}.txt"))
    metric = self.training.best_metric
    if metric in results:
      if metrics_lib.improves(metric, results[metric], self.best):
        self.best, self.evals_since_best = (results[metric], step), 0
      else:
        self.evals_since_best += 1
    samples = evaluation.translation_samples(self.eval_data, hypotheses,
                                             self.training.num_logged_samples)
    return results, samples

  def _patience_exhausted(self, results: dict | None) -> bool:
    """Whether early stopping ends the run after an evaluation of the best metric."""
    patience = self.training.early_stopping_patience
    if not patience or not results or self.training.best_metric not in results:
      return False
    if self.evals_since_best < patience:
      return False
    logging.info("Early stopping: %s has not improved on %.4g (step %d) in %d evaluations.",
                 self.training.best_metric, self.best[0], self.best[1], self.evals_since_best)
    return True

  def _due(self, step: int, last: int) -> _Due:
    training = self.training
    bleu = (self.translator is not None and training.bleu_every_steps > 0
            and _is_due(step, training.bleu_every_steps, last))
    return _Due(log=_is_due(step, training.log_every_steps, last),
                eval=_is_due(step, training.eval_every_steps, last), bleu=bleu,
                save=_is_due(step, training.checkpoint_every_steps, last) or bleu)

  def _log_train(self, step: int, sums: dict) -> None:
    learning_rate = optimizers.learning_rate_at(self.cfg.optimizer, self.setup.schedule,
                                                step - 1)
    scalars = metrics_lib.train_scalars(sums, learning_rate=learning_rate)
    # Throughput of the steps since the last log that did not compile, evaluations and
    # checkpoint writes left out.
    scalars["train/steps_per_second"], scalars["train/tokens_per_second"] = self.bar.update(
        step, scalars["train/loss"], learning_rate, scalars.pop("train/tokens"))
    self.writer.write(step, scalars)

  def _after_step(self, step: int, last: int, sums: dict, received: str | None):
    """Checks, logs, evaluates and saves as due; returns (sums, why the run stops or None)."""
    due = self._due(step, last)
    if received or due.log or due.save or due.eval:
      self._check_finite(sums, step)
    if due.log or received:
      self._log_train(step, sums)
      sums = None
    results = None
    if due.eval or due.bleu:
      results, samples = self._evaluate(step, with_bleu=due.bleu)
      self.writer.write(step, results)
      self.writer.write_samples(step, samples)
      self.bar.write(f"step {step}: " + ", ".join(
          f"{k.split('/')[-1]} {v:.4g}" for k, v in results.items()
          if not k.endswith("seconds") and not k.endswith("tokens")))
      self.bar.reset_clock()  # Throughput covers training only.
    if due.save or received:
      self._save(step, results if results and self.training.best_metric in results else None)
      self.bar.reset_clock()
    if received:
      return sums, received
    if self._patience_exhausted(results):
      if not due.save:
        self._save(step, results)
      return sums, "early_stopping"
    return sums, None

  def _next_batch(self, shapes: set) -> dict:
    """The next global batch; the first of each shape (added to `shapes`) compiles the train
    step, which the progress bar shows and leaves out of its rates."""
    host_batch = next(self.train_iter)
    shape = _batch_shape(host_batch)
    if shape not in shapes:
      shapes.add(shape)
      self.bar.compiling(len(shapes))
    return sharding.make_global_batch(host_batch, self.setup.mesh)

  def train(self) -> dict:
    """The step loop; returns the summary."""
    step, start_time = self.start_step, time.perf_counter()
    last, stopped_by, finished = resume.stopped_or_finished(
        self.workdir, step, self.training.num_train_steps,
        patience=self.training.early_stopping_patience, evals_since_best=self.evals_since_best,
        best_metric=self.training.best_metric)
    if finished is not None:
      if self.is_main:
        resume.print_summary(finished)
      return finished
    self._start_logging()
    self.bar = metrics_lib.ProgressBar(step, last, enabled=self.is_main)
    self.profiler = profiling.StepProfiler(
        self.training.profile_window,
        profiling.trace_dir(self.writer.tensorboard_dir, jax.process_index()))
    self.verified_step, sums = step, None
    shapes = set()  # Batch shapes the train step has been compiled for in this process.
    exit_message = (errors.interrupted_message(self.workdir)
                    if self.exit_on_second_interrupt else None)
    try:
      with signals.StopSignal(multiprocess=jax.process_count() > 1,
                              exit_message=exit_message) as stop:
        while step < last and stopped_by is None:
          self.profiler.before_step(step + 1)
          with self.profiler.step_annotation(step + 1):
            batch = self._next_batch(shapes)
            self.state, step_metrics = self.setup.train_step(self.state, batch)
            distributed.wait_on_cpu(step_metrics)
          sums = metrics_lib.accumulate(sums, step_metrics)
          step += 1
          self.profiler.after_step(step, (self.state, step_metrics))
          self.bar.advance(step)
          sums, stopped_by = self._after_step(step, last, sums, stop.poll(step))
    finally:
      self.bar.close()
    self.profiler.stop()  # A window past the last step, or a run stopped inside the window.
    self.checkpointer.wait()
    return self._finish(step, time.perf_counter() - start_time, stopped_by)

  def _finish(self, step: int, seconds: float, stopped_by: str | None) -> dict:
    """Final test evaluation (averaged checkpoints), summary.json and a short report."""
    summary = {
        "workdir": self.workdir,
        "task": self.run.task.name,
        "start_step": self.start_step,
        "final_step": step,
        "steps_this_run": step - self.start_step,
        "seconds_this_run": round(seconds, 1),
        "num_params": self.num_params,
        "stopped_by": stopped_by,
        "best_metric": self.training.best_metric,
        "best_value": self.best[0] if self.best else None,
        "best_step": self.best[1] if self.best else None,
        "checkpoints": self.checkpointer.directory,
        "checkpoint_steps": self.checkpointer.all_steps(),
        "metrics_jsonl": self.writer.jsonl_path,
        "tensorboard": self.writer.tensorboard_dir,
        "environment": provenance.environment(),
    }
    if stopped_by in (None, "early_stopping") and self.training.test_split:
      summary.update(self._test(step))
    self.writer.close()
    if self.is_main:
      resume.write_summary(self.workdir, summary)
    return summary

  def _test(self, step: int) -> dict:
    """Metrics (and BLEU) on the test split with the last k checkpoints averaged."""
    results, out = evaluation.evaluate_test(
        self.run, self.checkpointer, self.state, step, split=self.training.test_split,
        average_last_k=self.training.average_last_k, translator=self.translator)
    self.writer.write(step, results)
    return out | results

  def close(self, failed: bool = False) -> None:
    """Stops a running profile, waits for pending checkpoint writes and closes files (also
    after an error, when `failed` marks the W&B run failed; a failure to close, e.g. on a full
    disk, is logged, not raised over the error that ended the run)."""
    closers = [(self.profiler, lambda p: p.stop()),
               (self.writer, lambda w: w.close(exit_code=1 if failed else 0)),
               (self.checkpointer, lambda c: c.close())]
    for closeable, close in closers:
      if closeable is None:
        continue
      try:
        close(closeable)
      except Exception as e:  # Already failing: report, do not mask.
        logging.error("Closing %s failed: %s", type(closeable).__name__, e)


def train_and_evaluate(config: ml_collections.ConfigDict | dict, workdir: str, *,
                       exit_on_second_interrupt: bool = False) -> dict:
  """Trains (or resumes) a run in `workdir`, evaluating and checkpointing on the way.

  Args:
    config: the run config (sections model, data, optimizer, training, mesh, decoding; see
      configs/default.py).
    workdir: the run directory; created if missing, resumed if it holds a compatible run.
    exit_on_second_interrupt: a second Ctrl-C while training exits the program at once with
      `errors.interrupted_message` and status EXIT_INTERRUPTED (train.py); otherwise it raises
      KeyboardInterrupt (notebooks).

  Returns:
    The summary dict (also written to `workdir/summary.json`).

  Raises:
    errors.UsageError: a bad config or workdir, or a config incompatible with the workdir's
      run (nothing was written).
    errors.TrainingError: unreadable checkpoints or data, a non-finite loss, or a failed write
      such as a full disk (the message says what to do and which checkpoint is intact).
  """
  run = _Run(config, workdir, exit_on_second_interrupt=exit_on_second_interrupt)
  failed = True
  try:
    run.build()
    summary = run.train()
    failed = False
    return summary
  except OSError as e:
    raise resume.write_failure(e, run.workdir, run.checkpointer) from e
  finally:
    run.close(failed=failed)
