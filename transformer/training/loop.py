"""`train_and_evaluate(config, workdir)`: the training program of the Transformer
(Vaswani et al., 2017): wiring and cadence only; the work happens in the modules it calls.

A run directory holds config.json, config_history.jsonl, sentencepiece.model, checkpoints/,
metrics.jsonl, tensorboard/, hypotheses/ and summary.json. Rerunning with the same workdir
resumes. Nothing is written before the config, the workdir and the data are checked and the
checkpoint is restored.
"""

import dataclasses
import errno
import json
import math
import os
import signal
import sys
import threading
import time

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from transformer import checkpointing
from transformer import data as data_lib
from transformer import distributed
from transformer import metrics as metrics_lib
from transformer import model as model_lib
from transformer import sharding
from transformer.training import builder
from transformer.training import evaluation
from transformer.training import optimizers
from transformer.training import resume
from transformer.training import run_config
from transformer.training import state as state_lib

# Exit statuses of train.py (see README, "What survives what").
EXIT_FAILED = 1  # An error: the message says what and what is intact.
EXIT_USAGE = 2  # A bad flag, config or workdir: nothing was written.
EXIT_STOPPED = 75  # Stopped by SIGTERM / Ctrl-C, checkpoint saved: rerun to resume.
EXIT_INTERRUPTED = 130  # A second Ctrl-C: stopped at once; earlier checkpoints are intact.


class TrainingError(Exception):
  """A run cannot start or continue; the message says why and what to do."""


class UsageError(TrainingError):
  """The config, a flag or the workdir is unusable; nothing was written."""


class NonFiniteLossError(TrainingError, FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """All config sections as typed objects (converted once, at the boundary)."""

  model: dict  # Fields of TransformerConfig (vocabulary and special ids come later).
  data: data_lib.DataConfig
  optimizer: optimizers.OptimizerConfig
  training: run_config.TrainingConfig
  mesh: sharding.MeshConfig
  decoding: run_config.DecodingConfig


def parse_config(config: ml_collections.ConfigDict | dict) -> RunConfig:
  """Converts a ConfigDict into typed sections; errors list the valid fields of a section."""
  config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  expected = set(resume.CONFIG_SECTIONS)
  if set(config) != expected:
    raise UsageError(
        f"config sections must be {sorted(expected)}; got {sorted(config)} "
        f"(unknown: {sorted(set(config) - expected)}, missing: {sorted(expected - set(config))})"
    )
  try:
    model_fields = dict(config["model"])
    reserved = {"vocab_size", "input_vocab_size", "pad_id", "bos_id", "eos_id"} & set(model_fields)
    if reserved:
      raise ValueError(
          f"config.model must not set {sorted(reserved)}: vocabulary size and special ids come "
          "from the tokenizer (set config.data.vocab_size instead)"
      )
    for name in ("d_model", "num_heads", "d_ff", "max_len"):
      value = model_fields.get(name)
      if name in model_fields and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    # Validate the model fields now, with a placeholder vocabulary.
    builder.make_model_config(model_fields, vocab_size=8, pad_id=0, bos_id=2, eos_id=3)
  except TypeError as e:
    valid = [f.name for f in dataclasses.fields(model_lib.TransformerConfig)]
    raise UsageError(f"config.model: {e}. Valid fields of config.model: {', '.join(valid)}")
  except ValueError as e:
    raise UsageError(f"config.model: {e}") from e
  try:
    run = RunConfig(
        model=model_fields,
        data=run_config.to_dataclass(data_lib.DataConfig, config["data"], "data"),
        optimizer=run_config.to_dataclass(optimizers.OptimizerConfig, config["optimizer"],
                                          "optimizer"),
        training=run_config.to_dataclass(run_config.TrainingConfig, config["training"],
                                         "training"),
        mesh=run_config.to_dataclass(sharding.MeshConfig, config["mesh"], "mesh"),
        decoding=run_config.to_dataclass(run_config.DecodingConfig, config["decoding"],
                                         "decoding"),
    )
    builder.check_task(run.training.task)
  except ValueError as e:
    raise UsageError(str(e)) from e
  if run.model["max_len"] < run.data.max_len:
    raise UsageError(
        f"model.max_len={run.model['max_len']} is smaller than data.max_len={run.data.max_len}: "
        "the model could not embed every position"
    )
  return run


class _StopSignal:
  """Records SIGTERM / SIGINT so the loop can checkpoint and stop between steps.

  With several processes every process must stop after the same step, since saving a
  checkpoint is collective. SIGTERM is then left to jax's preemption service, which catches it
  (on any process), tells the others, and makes `reached_preemption_sync_point` true for one
  common step on all; Ctrl-C is turned into a SIGTERM of this process to take the same path.
  """

  def __init__(self, multiprocess: bool = False, exit_message: str | None = None):
    """Args:
      multiprocess: whether other processes must stop at the same step.
      exit_message: with it, a second Ctrl-C prints it and exits the program at once (status
        EXIT_INTERRUPTED); without it (a notebook), a second Ctrl-C raises KeyboardInterrupt.
    """
    self.received = None
    self._multiprocess = multiprocess
    self._exit_message = exit_message
    self._forwarded = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      if self._multiprocess:
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward)
      else:
        for sig in (signal.SIGTERM, signal.SIGINT):
          self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _second_interrupt(self):
    """A second Ctrl-C stops at once (a KeyboardInterrupt raised here may land in code that
    ignores it, such as a garbage-collector callback, hence the exit)."""
    if self._exit_message is None:
      raise KeyboardInterrupt
    print(self._exit_message, file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)  # No waiting on background threads: the user asked twice.

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      self._second_interrupt()
    self.received = signal.Signals(signum).name
    logging.warning("Received %s: saving a checkpoint and stopping after this step.",
                    self.received)

  def _forward(self, signum, frame):
    if self._forwarded:
      self._second_interrupt()
    self._forwarded = True
    logging.warning("Received SIGINT: all processes save a checkpoint and stop at a common step.")
    signal.raise_signal(signal.SIGTERM)  # To jax's preemption service (a C-level handler).

  def poll(self, step: int) -> str | None:
    """The signal that stops training after `step` (call once per step, on every process)."""
    if self._multiprocess and self.received is None:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = "SIGINT" if self._forwarded else "SIGTERM"
        logging.warning("Preemption notice (%s) on some process: saving a checkpoint at step %d "
                        "on every process and stopping.", self.received, step)
    return self.received

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def _saved_config(workdir: str, reader: checkpointing.Checkpointer | None) -> dict | None:
  """The config the workdir's checkpoints were saved with (the latest's, else config.json)."""
  if reader is None or not reader.all_steps():
    return None
  try:
    saved = reader.saved_config()
  except Exception:  # An unreadable latest checkpoint: restore falls back and says why.
    saved = None
  return saved or checkpointing.read_config_json(workdir)


def _check_compatible(workdir: str, config_dict: dict, saved: dict | None) -> None:
  """Refuses to continue a workdir whose checkpoints come from another model/data shape.

  Without checkpoints there is nothing to protect (a run that failed before its first save may
  be restarted with any config).
  """
  if saved is None:
    return
  try:
    checkpointing.check_compatible(saved, config_dict, workdir)
  except checkpointing.IncompatibleCheckpointError as e:
    raise UsageError(str(e)) from e


def _adopt_imported_model(config_dict: dict, workdir: str) -> dict:
  """For a workdir written by `python -m transformer.convert --from_hf`, the model section and
  vocabulary size of its config.json replace the requested ones (the other sections, the data
  included, come from --config): fine-tuning keeps the imported model's shape."""
  if not os.path.isdir(os.path.join(str(workdir), data_lib.tokenizer.MARIAN_DIR)):
    return config_dict
  saved = checkpointing.read_config_json(os.path.abspath(workdir))
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


def _improves(metric: str, value: float, best: tuple[float, int] | None) -> bool:
  """Whether `value` of `metric` beats the best (value, step) so far (None: nothing yet)."""
  if best is None:
    return True
  return value < best[0] if checkpointing.is_lower_better(metric) else value > best[0]


def _best_so_far(jsonl_path: str, metric: str,
                 up_to_step: int) -> tuple[tuple[float, int] | None, int]:
  """Best `metric` already in metrics.jsonl (for resumed runs), and evaluations since it.

  Returns:
    ((value, step) of the best record or None, number of later records of `metric`).
  """
  if not os.path.exists(jsonl_path):
    return None, 0
  values = {}  # By step: a record written twice (before supersession existed) counts once.
  for record in metrics_lib.read_jsonl(jsonl_path):
    value = record.get(metric)
    if isinstance(value, (int, float)) and record["step"] <= up_to_step:
      values[record["step"]] = value
  best, since_best = None, 0
  for step, value in sorted(values.items()):
    if _improves(metric, value, best):
      best, since_best = (value, step), 0
    else:
      since_best += 1
  return best, since_best


def _is_due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


class _Run:
  """State of one call of `train_and_evaluate` (kept out of module globals)."""

  def __init__(self, config: ml_collections.ConfigDict | dict, workdir: str, *,
               exit_on_second_interrupt: bool = False):
    self.config_dict = _adopt_imported_model(
        config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config),
        workdir)
    self.cfg = parse_config(self.config_dict)
    if "://" in str(workdir):
      raise UsageError(
          f"workdir {workdir!r} is a URL; the workdir must be a directory path. For a "
          "multi-host run, use a filesystem that every host mounts (NFS, Filestore, or a "
          "Cloud Storage bucket through gcsfuse, e.g. /mnt/bucket/run)."
      )
    self.workdir = os.path.abspath(workdir)
    self.exit_on_second_interrupt = exit_on_second_interrupt
    try:
      resume.check_workdir(self.workdir)
    except ValueError as e:
      raise UsageError(str(e)) from e
    self.is_main = distributed.is_main_process()
    self.training = self.cfg.training
    self.task = self.training.task
    self.writer = None  # Set by build().
    self.checkpointer = None  # Set by build().

  def build(self):
    """Checks, then mesh, tokenizer, data, model and the restored state; only then writes.

    The checkpoints are read through a read-only Checkpointer; config.json, the config history
    and checkpoints/ are written once the state is restored (or initialized).
    """
    checkpoint_dir = os.path.join(self.workdir, "checkpoints")
    reader = None
    if checkpointing.steps_of(checkpoint_dir):
      reader = checkpointing.Checkpointer(
          checkpoint_dir, max_to_keep=self.training.max_checkpoints_to_keep,
          best_metric=self.training.best_metric, read_only=True)
    try:
      self.saved_config = _saved_config(self.workdir, reader)
      _check_compatible(self.workdir, self.config_dict, self.saved_config)
      self._build_inputs()
      state, step = self._restore(reader)
    finally:
      if reader is not None:
        reader.close()
    self.checkpointer = checkpointing.Checkpointer(
        checkpoint_dir,
        max_to_keep=self.training.max_checkpoints_to_keep,
        best_metric=self.training.best_metric,
        async_save=self.training.async_checkpointing,
    )
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
    self._check_shared_workdir()
    self.writer = metrics_lib.MetricWriter(self.workdir, enabled=self.is_main,
                                           resume_step=self.start_step)
    self.best, self.evals_since_best = _best_so_far(
        self.writer.jsonl_path, self.training.best_metric, self.start_step)

  def _build_inputs(self):
    """Mesh, tokenizer, data pipelines, model and jitted steps (nothing is written but the
    tokenizer of a new run)."""
    cfg, workdir = self.cfg, self.workdir
    try:
      self.mesh = sharding.make_mesh(cfg.mesh)
      block, num_blocks = sharding.process_batch_block(self.mesh)
    except ValueError as e:
      raise UsageError(f"config.mesh: {e}") from e
    self.num_data_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    logging.info("Mesh %s over %d devices (%s) in %d process(es); this process feeds block %d "
                 "of %d of every batch.", dict(self.mesh.shape), self.mesh.size,
                 jax.devices()[0].platform, jax.process_count(), block, num_blocks)
    # The pipeline's "process" is this process's block of batch rows (the same as the process
    # index and count unless processes share rows).
    data_kwargs = dict(task=self.task, process_index=block, process_count=num_blocks,
                       num_data_shards=self.num_data_shards)
    self.tokenizer = self._tokenizer()
    try:
      self.train_iter = data_lib.make_train_iterator(cfg.data, self.tokenizer, **data_kwargs)
      self.eval_data = data_lib.make_eval_dataset(cfg.data, self.tokenizer, "validation",
                                                  **data_kwargs)
    except (ValueError, OSError) as e:
      raise TrainingError(f"cannot build the data pipeline of {cfg.data.dataset!r}: {e}") from e
    self.data_kwargs = data_kwargs
    model_config = builder.make_model_config(
        cfg.model, vocab_size=self.tokenizer.vocab_size, pad_id=self.tokenizer.pad_id,
        bos_id=self.tokenizer.bos_id, eos_id=self.tokenizer.eos_id,
        input_vocab_size=self.tokenizer.source_vocab_size,
    )
    self.setup = builder.make_train_setup(
        task=self.task, model_config=model_config, optimizer_config=cfg.optimizer,
        num_train_steps=self.training.num_train_steps,
        label_smoothing=self.training.label_smoothing, seed=self.training.seed, mesh=self.mesh,
    )
    counts = state_lib.count_params(self.setup.abstract_state.params)
    logging.info("Model %s, vocabulary %d, parameters: %s", self.task,
                 self.tokenizer.vocab_size, {k: f"{v:,}" for k, v in counts.items()})
    self.num_params = counts["total"]
    self.translator = None
    if self.task == "translation":
      self.translator = evaluation.Translator.create(
          self.setup, beam_size=cfg.decoding.beam_size, alpha=cfg.decoding.length_penalty,
          max_decode_len=cfg.data.max_len + cfg.decoding.max_extra_length,
      )

  def _saved_target(self):
    """Restore target of checkpoints saved under another optimizer transformation (e.g.
    gradient clipping switched on), or None when the current state structure fits them."""
    current = self.setup.abstract_state_with_shardings()
    saved_optimizer = (self.saved_config or {}).get("optimizer")
    if saved_optimizer is None or saved_optimizer == self.config_dict["optimizer"]:
      return None
    try:
      saved_cfg = run_config.to_dataclass(optimizers.OptimizerConfig, saved_optimizer,
                                          "optimizer")
    except (TypeError, ValueError):
      return None
    saved = self.setup.abstract_state_with_optimizer(saved_cfg, self.training.num_train_steps)
    if jax.tree.structure(saved.opt_state) == jax.tree.structure(current.opt_state):
      return None
    return saved

  def _restore(self, reader: checkpointing.Checkpointer | None):
    """(state, step) of the latest readable checkpoint, or (None, None) without one."""
    if reader is None:
      return None, None
    saved_target = self._saved_target()
    target = saved_target or self.setup.abstract_state_with_shardings()
    try:
      state, step = reader.restore(target, data_iterator=self.train_iter)
    except checkpointing.UnreadableCheckpointError as e:
      raise TrainingError(f"{e}. Use a new --workdir to start afresh.") from e
    if state is not None and saved_target is not None:
      state = self._carry_over_optimizer_state(state, step)
    return state, step

  def _carry_over_optimizer_state(self, state, step: int):
    """`state` (saved under another optimizer transformation) in the current one's structure."""
    fresh = self.setup.init_state()
    opt_state, kept, initialized = resume.carry_over_opt_state(state.opt_state, fresh.opt_state)
    logging.warning(
        "The optimizer transformation changed since the checkpoint at step %d: parameters and "
        "%s restored; newly initialized: %s.", step,
        ", ".join(kept) if kept else "no optimizer state",
        ", ".join(initialized) if initialized else "nothing")
    merged = fresh.replace(step=state.step, params=state.params, model_state=state.model_state,
                           rng=state.rng, opt_state=opt_state)
    return jax.device_put(merged, self.setup.state_shardings)

  def _check_shared_workdir(self) -> None:
    """Refuses a multi-process run whose processes do not share the workdir."""
    if jax.process_count() == 1:
      return
    distributed.barrier("config_json_written")
    sees = distributed.gather_from_all(
        os.path.exists(os.path.join(self.workdir, "config.json")))
    blind = [i for i, seen in enumerate(sees) if not seen]
    if blind:
      raise TrainingError(
          f"process(es) {blind} cannot see {self.workdir}/config.json, which process 0 has "
          "written: the workdir must be on a filesystem that every host shares (NFS, Filestore, "
          "a gcsfuse-mounted bucket), at the same path."
      )

  def _tokenizer(self) -> data_lib.Tokenizer:
    """The run's tokenizer: process 0 trains and writes it if needed, the others then load it."""
    error = None
    tokenizer = None
    if self.is_main:
      try:
        tokenizer = data_lib.get_tokenizer(self.cfg.data, self.workdir, task=self.task)
      except (ValueError, OSError) as e:
        error = e
    if distributed.broadcast_from_main(error is not None):
      raise TrainingError(
          f"cannot build the data pipeline of {self.cfg.data.dataset!r}: "
          + (str(error) if error else "process 0 failed to build the tokenizer (see its log)")
      ) from error
    if tokenizer is None:
      try:
        tokenizer = data_lib.get_tokenizer(self.cfg.data, self.workdir, task=self.task)
      except (ValueError, OSError) as e:
        raise TrainingError(f"cannot load the tokenizer process 0 wrote: {e}") from e
    return tokenizer

  def _save(self, step: int, metrics: dict | None = None) -> None:
    started = self.checkpointer.save(
        step, self.state, data_iterator=self.train_iter, config=self.config_dict,
        metrics=metrics,
    )
    if started:
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
    last = self.last_good_step
    first = self.verified_step + 1
    where = f"at step {step}" if first == step else f"between steps {first} and {step}"
    raise NonFiniteLossError(
        f"training loss became {'non-finite' if math.isfinite(loss) else loss} (gradient norm "
        f"{grad}) {where}; training stopped. "
        + (f"The last good checkpoint is step {last} in {self.checkpointer.directory} "
           "(nothing later was saved)." if last is not None else "No checkpoint was saved.")
        + " Try a lower optimizer.learning_rate, a longer optimizer.warmup_steps, "
        "optimizer.grad_clip_norm=1.0, or model.dtype='float32'."
    )

  def _evaluate(self, step: int, with_bleu: bool) -> dict[str, float]:
    results = evaluation.evaluate_loss(self.setup, self.state, self.eval_data)
    if with_bleu:
      start = time.perf_counter()
      scores, _ = evaluation.evaluate_bleu(
          self.translator, self.state, self.eval_data, self.tokenizer,
          num_examples=self.training.bleu_num_examples,
          output_path=os.path.join(self.workdir, "hypotheses", f"validation_step{step}.txt"),
      )
      results.update({f"eval/{name}": value for name, value in scores.items()})
      results["eval/bleu_seconds"] = time.perf_counter() - start
    metric = self.training.best_metric
    if metric in results:
      value = results[metric]
      if _improves(metric, value, self.best):
        self.best, self.evals_since_best = (value, step), 0
      else:
        self.evals_since_best += 1
    return results

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

  def train(self) -> dict:
    """The step loop; returns the summary."""
    training = self.training
    last = training.num_train_steps
    step = self.start_step
    start_time = time.perf_counter()
    bar = metrics_lib.ProgressBar(step, last, enabled=self.is_main)
    sums, window_time, stopped_by = None, start_time, None
    patience = training.early_stopping_patience
    if patience and self.evals_since_best >= patience and step < last:
      logging.info("This run already stopped early (no improvement of %s in %d evaluations); "
                   "not training further.", training.best_metric, self.evals_since_best)
      last, stopped_by = step, "early_stopping"
    if step >= last:
      finished = resume.finished_summary(self.workdir, step)
      if finished is not None:
        bar.close()
        logging.info("The run in %s already finished at step %d; its summary.json is kept.",
                     self.workdir, step)
        self._print_summary(finished)
        return finished
    self.verified_step = step
    try:
      with _StopSignal(multiprocess=jax.process_count() > 1,
                       exit_message=(interrupted_message(self.workdir)
                                     if self.exit_on_second_interrupt else None)) as stop:
        while step < last:
          batch = sharding.make_global_batch(next(self.train_iter), self.mesh)
          self.state, step_metrics = self.setup.train_step(self.state, batch)
          distributed.wait_on_cpu(step_metrics)
          sums = metrics_lib.accumulate(sums, step_metrics)
          step += 1
          bar.advance(step)
          received = stop.poll(step)
          log_due = _is_due(step, training.log_every_steps, last)
          eval_due = _is_due(step, training.eval_every_steps, last)
          bleu_due = (self.translator is not None and training.bleu_every_steps > 0
                      and _is_due(step, training.bleu_every_steps, last))
          save_due = _is_due(step, training.checkpoint_every_steps, last) or bleu_due
          if received or log_due or save_due or eval_due:
            self._check_finite(sums, step)
          if log_due or received:
            train = metrics_lib.summarize(sums, "train")
            num_steps = float(jax.device_get(sums["num_steps"]))
            train["train/grad_norm"] = float(jax.device_get(sums["grad_norm_sum"])) / num_steps
            train["train/learning_rate"] = optimizers.learning_rate_at(
                self.cfg.optimizer, self.setup.schedule, step - 1)
            train["train/tokens_per_second"] = bar.update(
                step, train["train/loss"], train["train/learning_rate"], train["train/tokens"])
            now = time.perf_counter()
            train["train/steps_per_second"] = num_steps / max(now - window_time, 1e-9)
            window_time = now
            del train["train/tokens"]
            self.writer.write(step, train)
            sums = None
          results = None
          if eval_due or bleu_due:
            results = self._evaluate(step, with_bleu=bleu_due)
            self.writer.write(step, results)
            bar.write(f"step {step}: " + ", ".join(
                f"{k.split('/')[-1]} {v:.4g}" for k, v in results.items()
                if not k.endswith("seconds") and not k.endswith("tokens")))
            # Throughput figures cover training only, not evaluation time.
            window_time = bar.reset_clock()
          if save_due or received:
            self._save(step, results if results and training.best_metric in results else None)
          if received:
            stopped_by = received
            break
          if self._patience_exhausted(results):
            if not save_due:
              self._save(step, results)
            stopped_by = "early_stopping"
            break
    finally:
      bar.close()
    self.checkpointer.wait()
    return self._finish(step, time.perf_counter() - start_time, stopped_by)

  def _finish(self, step: int, seconds: float, stopped_by: str | None) -> dict:
    """Final test evaluation (averaged checkpoints), summary.json and a short report."""
    training = self.training
    summary = {
        "workdir": self.workdir,
        "task": self.task,
        "start_step": self.start_step,
        "final_step": step,
        "steps_this_run": step - self.start_step,
        "seconds_this_run": round(seconds, 1),
        "num_params": self.num_params,
        "stopped_by": stopped_by,
        "best_metric": training.best_metric,
        "best_value": self.best[0] if self.best else None,
        "best_step": self.best[1] if self.best else None,
        "checkpoints": os.path.join(self.workdir, "checkpoints"),
        "checkpoint_steps": self.checkpointer.all_steps(),
        "metrics_jsonl": self.writer.jsonl_path,
        "tensorboard": self.writer.tensorboard_dir,
    }
    if stopped_by in (None, "early_stopping") and training.test_split:
      summary.update(self._test(step))
    self.writer.close()
    if self.is_main:
      path = os.path.join(self.workdir, resume.SUMMARY)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
      os.replace(path + ".tmp", path)
      self._print_summary(summary)
    return summary

  def _print_summary(self, summary: dict) -> None:
    if self.is_main:
      lines = [f"{k}: {v}" for k, v in summary.items()]
      print("\n".join(["", "Run summary"] + [f"  {line}" for line in lines]), flush=True)

  def write_failure(self, error: OSError) -> TrainingError:
    """The error for a failed write (a full disk): which file, and which checkpoint is intact."""
    what = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    verb = "write" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) else (
        "read or write")
    try:
      if self.checkpointer is not None:
        self.checkpointer.wait()
    except Exception:  # The failed write may be this checkpoint's; the finished ones count.
      pass
    steps = checkpointing.steps_of(os.path.join(self.workdir, "checkpoints"))
    intact = (f"the last checkpoint, step {steps[-1]} in {self.workdir}/checkpoints, is intact"
              if steps else "no checkpoint was saved yet")
    return TrainingError(f"could not {verb} {error.filename or 'a file'} ({what}); {intact}. "
                         "Free space (or fix the cause) and rerun the same command to resume.")

  def close(self) -> None:
    """Waits for pending checkpoint writes and closes files (also after an error; a failure
    to close, e.g. on a full disk, is logged, not raised over the error that ended the run)."""
    for closeable in (self.writer, self.checkpointer):
      if closeable is None:
        continue
      try:
        closeable.close()
      except Exception as e:  # Already failing: report, do not mask.
        logging.error("Closing %s failed: %s", type(closeable).__name__, e)

  def _test(self, step: int) -> dict:
    """Loss (and BLEU for translation) on the test split with the last k checkpoints averaged."""
    training = self.training
    steps = self.checkpointer.all_steps()
    k = min(training.average_last_k, len(steps))
    if k < training.average_last_k:
      logging.warning("average_last_k=%d but only %d checkpoints exist; averaging %d.",
                      training.average_last_k, len(steps), k)
    state, averaged = self.state, [step]
    if k > 1:
      state, averaged = self.checkpointer.average_last_k(
          k, self.setup.abstract_state_with_shardings())
    test_data = data_lib.make_eval_dataset(self.cfg.data, self.tokenizer, training.test_split,
                                           **self.data_kwargs)
    results = evaluation.evaluate_loss(self.setup, state, test_data)
    results = {k.replace("eval/", "test/"): v for k, v in results.items()}
    out = {"test_averaged_steps": averaged}
    if self.translator is not None:
      path = os.path.join(self.workdir, "hypotheses", f"{training.test_split}_step{step}.txt")
      scores, _ = evaluation.evaluate_bleu(self.translator, state, test_data, self.tokenizer,
                                           output_path=path)
      results.update({f"test/{name}": value for name, value in scores.items()})
      out["test_hypotheses"] = path
    self.writer.write(step, results)
    out.update(results)
    return out


def interrupted_message(workdir: str) -> str:
  """What train.py prints when a second Ctrl-C stops it at once."""
  return ("error: interrupted again: stopped at once without saving; the checkpoints already in "
          f"{os.path.abspath(workdir)}/checkpoints are intact. Rerun the same command to resume.")


def train_and_evaluate(config: ml_collections.ConfigDict | dict, workdir: str, *,
                       exit_on_second_interrupt: bool = False) -> dict:
  """Trains (or resumes) a run in `workdir`, evaluating and checkpointing on the way.

  Args:
    config: the run config (sections model, data, optimizer, training, mesh, decoding; see
      configs/default.py).
    workdir: the run directory; created if missing, resumed if it holds a compatible run.
    exit_on_second_interrupt: a second Ctrl-C while training exits the program at once with
      `interrupted_message` and status EXIT_INTERRUPTED (train.py); otherwise it raises
      KeyboardInterrupt (notebooks).

  Returns:
    The summary dict (also written to `workdir/summary.json`).

  Raises:
    UsageError: a bad config or workdir, or a config incompatible with the workdir's run
      (nothing was written).
    TrainingError: unreadable checkpoints or data, a non-finite loss, or a failed write such
      as a full disk (the message says what to do and which checkpoint is intact).
  """
  run = _Run(config, workdir, exit_on_second_interrupt=exit_on_second_interrupt)
  try:
    run.build()
    return run.train()
  except OSError as e:
    raise run.write_failure(e) from e
  finally:
    run.close()
