"""Metric accumulation, BLEU and writers (metrics.jsonl; TensorBoard scalars, texts and hparams;
optionally Weights & Biases; a progress bar).

Steps return metric *sums* and a denominator; `summarize` divides on the host at log time.
BLEU is sacrebleu's corpus BLEU over detokenized text (Papineni et al., 2002; Post, 2018).
"""

import collections
import html
import json
import math
import os
import secrets
import string
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import sacrebleu
import tensorboardX
import tqdm
from absl import logging

from transformer import storage

SUPERSEDED_SUFFIX = ".superseded"  # metrics.jsonl.superseded keeps records a resume replaced.


def is_lower_better(metric: str) -> bool:
  """Whether smaller values of `metric` are better (losses, perplexities)."""
  return metric.endswith("loss") or metric.endswith("perplexity")


def improves(metric: str, value: float, best: tuple[float, int] | None) -> bool:
  """Whether `value` of `metric` beats the best (value, step) so far (None: nothing yet)."""
  if best is None:
    return True
  return value < best[0] if is_lower_better(metric) else value > best[0]


def accumulate(total: dict[str, jax.Array] | None, new: dict[str, jax.Array]) -> dict:
  """Adds step metric sums elementwise; stays on device (no host sync)."""
  if total is None:
    return dict(new)
  return {k: total[k] + new[k] for k in new}


def summarize(sums: Mapping[str, float | jax.Array], prefix: str) -> dict[str, float]:
  """Turns metric sums into averages.

  Args:
    sums: `loss_sum`, `nll_sum`, `accuracy_sum`, `weight_sum` (number of target tokens), and
      optionally `num_steps`.
    prefix: e.g. "train" or "eval"; keys come out as "train/loss".

  Returns:
    `{prefix}/loss` (label-smoothed), `{prefix}/accuracy`, `{prefix}/perplexity`
    (exp of the unsmoothed per-token negative log-likelihood) and `{prefix}/tokens`.
  """
  host = {k: float(np.asarray(v)) for k, v in jax.device_get(dict(sums)).items()}
  weight = max(host["weight_sum"], 1e-9)
  nll = host["nll_sum"] / weight
  return {
      f"{prefix}/loss": host["loss_sum"] / weight,
      f"{prefix}/accuracy": host["accuracy_sum"] / weight,
      f"{prefix}/perplexity": math.exp(min(nll, 700.0)) if math.isfinite(nll) else nll,
      f"{prefix}/tokens": host["weight_sum"],
  }


def train_scalars(sums: Mapping[str, jax.Array], *, learning_rate: float) -> dict[str, float]:
  """The logged training metrics of the steps accumulated in `sums`.

  Args:
    sums: `accumulate`d train-step metrics (with `grad_norm_sum` and `num_steps`).
    learning_rate: of the last step.

  Returns:
    `summarize(sums, "train")` plus train/grad_norm (mean over the steps) and
    train/learning_rate. (Throughput comes from `ProgressBar.update`.)
  """
  scalars = summarize(sums, "train")
  num_steps = float(jax.device_get(sums["num_steps"]))
  scalars["train/grad_norm"] = float(jax.device_get(sums["grad_norm_sum"])) / num_steps
  scalars["train/learning_rate"] = learning_rate
  return scalars


def compute_bleu(hypotheses: Sequence[str], references: Sequence[str], *,
                 lowercase: bool = False) -> float:
  """Corpus BLEU (sacrebleu, 13a tokenization) on detokenized text.

  Args:
    hypotheses: one detokenized translation per sentence.
    references: one detokenized reference per sentence, same order.
    lowercase: False for sacrebleu's default cased BLEU; True for the lowercased BLEU that the
      Multi30k literature reports.

  Returns:
    BLEU in [0, 100].
  """
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  if not hypotheses:
    raise ValueError("BLEU needs at least one sentence")
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)],
                                     lowercase=lowercase).score)


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
  """The scores a paper reports, each with its sacreBLEU signature (so it can be reproduced).

  Returns:
    {"bleu", "bleu_lowercase", "chrf": floats in [0, 100], and "bleu_signature",
    "bleu_lowercase_signature", "chrf_signature": sacreBLEU signature strings}.
  """
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  if not hypotheses:
    raise ValueError("scoring needs at least one sentence")
  scores = {}
  metrics = (("bleu", sacrebleu.BLEU()), ("bleu_lowercase", sacrebleu.BLEU(lowercase=True)),
             ("chrf", sacrebleu.CHRF()))
  for name, metric in metrics:
    scores[name] = float(metric.corpus_score(list(hypotheses), [list(references)]).score)
    scores[f"{name}_signature"] = str(metric.get_signature())
  return scores


def _cut_torn_tail(path: str) -> None:
  """Removes an incomplete last line (a write cut short by a crash) so appends start clean."""
  if not storage.exists(path):
    return
  data = storage.read_bytes(path)
  if not data or data.endswith(b"\n"):
    return
  keep = data.rfind(b"\n") + 1
  storage.write_atomic(path, data[:keep])
  logging.warning("%s ended in an incomplete line of %d bytes (an interrupted write); removed "
                  "it.", path, len(data) - keep)


def supersede_after(path: str, step: int) -> int:
  """Moves the records of steps after `step` from `path` to `path + SUPERSEDED_SUFFIX`.

  A run resumed from the checkpoint at `step` replays the later steps and logs them again; their
  earlier records are kept aside, not doubled.

  Returns:
    The number of records moved.
  """
  if not storage.exists(path):
    return 0
  kept, later = [], []
  for record in read_jsonl(path):
    (later if record["step"] > step else kept).append(record)
  if not later:
    return 0
  storage.append(path + SUPERSEDED_SUFFIX, "".join(json.dumps(r) + "\n" for r in later))
  storage.write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
  logging.info("Resuming at step %d: %d records of later steps (replayed now) moved from %s to "
               "%s.", step, len(later), path, path + SUPERSEDED_SUFFIX)
  return len(later)


def _markdown_cell(text: str) -> str:
  """`text` as one cell of a Markdown table: no line breaks, no markup, no HTML."""
  text = html.escape(" ".join(str(text).split()), quote=False)
  for char in "\\`*_[]|#":
    text = text.replace(char, "\\" + char)
  return text or " "


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A Markdown table (TensorBoard's Text tab renders it) of `rows` under `header`."""
  lines = ["| " + " | ".join(_markdown_cell(h) for h in header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, bool | int | float | str]:
  """{"section.field": value} of a nested config, as hparams take them: numbers, booleans and
  strings as they are, lists as JSON text, None left out."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, f"{name}."))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    elif value is not None:
      flat[name] = json.dumps(value, default=str)
  return flat


WANDB_RUN_ID_FILE = "wandb_run_id"  # In the workdir: every start of a run logs to one W&B run.


def start_wandb_run(project: str, workdir: str, config: Mapping):
  """Starts (or, for a workdir that has one, resumes) the W&B run of `workdir` (process 0).

  The run id is kept in `workdir/wandb_run_id`, so a resumed training run continues the same
  W&B run. W&B's local files go to `workdir/wandb/` (for a gs:// workdir: WANDB_DIR, or the
  current directory). WANDB_MODE=offline writes them only (upload later with `wandb sync`).

  Args:
    project: the W&B project.
    workdir: the run directory.
    config: the run config (nested dict), shown as the W&B run's config.

  Returns:
    The `wandb` Run.

  Raises:
    RuntimeError: W&B refused to start (e.g. no API key, no network), saying what to do.
  """
  import wandb  # pylint: disable=g-import-not-at-top  # Optional: only when a project is set.

  id_path = os.path.join(workdir, WANDB_RUN_ID_FILE)
  if storage.exists(id_path):
    run_id = storage.read_text(id_path).strip()
  else:
    alphabet = string.ascii_lowercase + string.digits  # W&B's own ids: 8 of these.
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    storage.write_atomic(id_path, run_id + "\n")
  local = not storage.is_remote(workdir)
  try:
    run = wandb.init(project=project, id=run_id, resume="allow",
                     name=os.path.basename(workdir), dir=workdir if local else None)
  except wandb.errors.Error as e:
    raise RuntimeError(
        f"cannot start the Weights & Biases run {run_id} of project {project!r}: {e}. Log in "
        "(wandb login, or WANDB_API_KEY), or set WANDB_MODE=offline to write it locally and "
        "upload it later with wandb sync") from e
  run.config.update(dict(config), allow_val_change=True)
  return run


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files (process 0 only).

  Each `write` appends one JSON object per line, e.g. {"step": 100, "train/loss": 3.1}, in a
  single write that either lands whole or is cut off again (a full disk raises an OSError
  naming the file, and leaves no torn line). TensorBoard events go to `workdir/tensorboard`
  through tensorboardX (no TensorFlow needed): the scalars, and texts and hparams from
  `write_config` and `write_samples`. With `attach_wandb`, the same go to Weights & Biases.
  """

  def __init__(self, workdir: str, enabled: bool = True, *, resume_step: int | None = None):
    """Opens the writers.

    Args:
      workdir: the run directory.
      enabled: False writes nothing (processes other than 0).
      resume_step: the step a resumed run restarts from: records and TensorBoard events of
        later steps are superseded by the replayed ones (see `supersede_after`).
    """
    self._enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    self._tb = None
    self._wandb = None  # A wandb Run (attach_wandb).
    self._wandb_skipped = False  # Whether replayed steps were held back from W&B.
    if enabled:
      storage.makedirs(workdir)
      _cut_torn_tail(self.jsonl_path)
      if resume_step is not None:
        supersede_after(self.jsonl_path, resume_step)
      self._tb = tensorboardX.SummaryWriter(
          self.tensorboard_dir, purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` at `step`; non-finite values are written as strings in JSON."""
    if not self._enabled:
      return
    record = {"step": int(step)}
    for key, value in scalars.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else str(value)
      self._tb.add_scalar(key, value, int(step))
    storage.append(self.jsonl_path, json.dumps(record) + "\n")
    self._tb.flush()
    self._log_wandb(step, {k: float(v) for k, v in scalars.items()})

  def attach_wandb(self, run) -> None:
    """Also sends every later record to the Weights & Biases run `run` (`start_wandb_run`),
    finished by `close`."""
    if self._enabled:
      self._wandb = run

  def _log_wandb(self, step: int, data: dict) -> None:
    """Logs `data` at `step` to W&B, unless the W&B run already holds that step: a resumed
    run replays the steps after its checkpoint exactly, and W&B only takes increasing steps."""
    run = self._wandb
    if run is None:
      return
    if step < run.step:
      if not self._wandb_skipped:
        logging.info("W&B run %s already has steps up to %d (an earlier start of this run): "
                     "the replayed steps up to there are not sent again.", run.id, run.step - 1)
        self._wandb_skipped = True
      return
    run.log(data, step=int(step))

  def write_config(self, step: int, config: Mapping, metrics: Sequence[str]) -> None:
    """Records the run's config at `step` (once per start): as JSON text, and as TensorBoard
    hparams of this run (flattened scalar fields, e.g. "model.d_model") against `metrics`, so
    the HParams tab compares runs of one --logdir. Written into the scalars' own event file:
    no extra TensorBoard run."""
    if not self._enabled:
      return
    text = "```json\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```"
    self._tb.add_text("config", text, int(step))
    experiment, session_start, _ = tensorboardX.summary.hparams(
        flatten_config(config), {name: 0.0 for name in metrics})
    events = self._tb._get_file_writer()  # pylint: disable=protected-access
    events.add_summary(experiment, int(step))
    events.add_summary(session_start, int(step))
    self._tb.flush()

  def write_samples(self, step: int, samples: Sequence[tuple[str, str, str]],
                    tag: str = "eval/samples") -> None:
    """Records (source, reference, hypothesis) triples at `step`: a Markdown table in
    TensorBoard's Text tab, and a table in W&B."""
    if not self._enabled or not samples:
      return
    header = ("#", "source", "reference", "hypothesis")
    rows = [(str(i),) + tuple(sample) for i, sample in enumerate(samples, start=1)]
    self._tb.add_text(tag, markdown_table(header, rows), int(step))
    self._tb.flush()
    if self._wandb is not None:
      import wandb  # pylint: disable=g-import-not-at-top

      table = wandb.Table(columns=list(header[1:]), data=[list(sample) for sample in samples])
      self._log_wandb(step, {tag: table})

  def close(self, exit_code: int = 0) -> None:
    """Closes the files and finishes the W&B run (`exit_code` 1: the run failed)."""
    if self._enabled:
      self._enabled = False
      self._tb.close()
      run, self._wandb = self._wandb, None
      if run is not None:
        run.finish(exit_code=exit_code)


def read_jsonl(path: str) -> list[dict]:
  """Reads a metrics.jsonl file back as a list of dicts, one per line.

  A line that is not a JSON object with an integer "step" (a write torn by a crash or a full
  disk) is skipped with a warning naming it.
  """
  lines = storage.read_bytes(path).split(b"\n")
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      record = None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
      logging.warning("%s line %d is not a complete metrics record (a torn write?); skipped: "
                      "%.60r", path, number, line)
      continue
    records.append(record)
  return records


def format_duration(seconds: float) -> str:
  """`seconds` as [D days, ]H:MM:SS or MM:SS (tqdm's format)."""
  seconds = max(int(round(seconds)), 0)
  days, seconds = divmod(seconds, 86400)
  clock = tqdm.tqdm.format_interval(seconds)
  return f"{days}d {clock}" if days else clock


class ProgressBar:
  """A tqdm bar showing steps, the ETA, step rate, loss, learning rate and tokens/s, and the
  clock of the logged throughput (the bar on process 0 only).

  Rates count only the time of steps that did not compile: the first step of each new batch
  shape traces and compiles the jitted train step (seconds to minutes), and would make a rate
  over all steps say days at the start of a run. While such a step runs, the bar says
  "compiling batch shape N" instead. Evaluations and checkpoint writes are left out too (the
  loop calls `reset_clock` after them). The ETA is the remaining steps over the rate of the
  last `window` measured steps.
  """

  def __init__(self, initial_step: int, total_steps: int, enabled: bool = True, *,
               clock=time.perf_counter, file=None, window: int = 100):
    """Args:
      initial_step: steps already done (a resumed run).
      total_steps: the last step.
      enabled: False shows nothing (processes other than 0); the figures are still computed.
      clock: seconds now (a fake one in tests).
      file: where the bar goes (default stderr).
      window: steps the ETA's rate is measured over.
    """
    self._clock = clock
    self._total = total_steps
    self._step = initial_step
    self._mark = clock()  # End of the last step (or pause).
    self._compiling, self._num_shapes = False, 0
    self._file = file or sys.stderr
    self._durations = collections.deque(maxlen=window)  # (steps, seconds) of measured advances.
    # Since the last `update`: [measured steps, their seconds, compiled steps, their seconds].
    self._log_window = [0, 0.0, 0, 0.0]
    self._figures = ""  # Loss, learning rate and tokens/s of the last `update`.
    self._bar = None
    if enabled:
      self._bar = tqdm.tqdm(
          total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
          file=self._file, mininterval=1.0,
          # tqdm's own rate and ETA would count compiling steps: the postfix has ours.
          bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
      )
      self._show()

  def steps_per_second(self) -> float | None:
    """Steps per second over the last measured (non-compiling) steps; None before any."""
    seconds = sum(s for _, s in self._durations)
    if not self._durations or seconds <= 0:
      return None
    return sum(n for n, _ in self._durations) / seconds

  def eta_seconds(self) -> float | None:
    """Seconds until the last step at `steps_per_second`; None while it is unknown."""
    rate = self.steps_per_second()
    return None if rate is None else (self._total - self._step) / rate

  def text(self) -> str:
    """What follows the elapsed time in the bar: ETA, rate, and the last `update`'s figures."""
    eta, rate = self.eta_seconds(), self.steps_per_second()
    parts = ["ETA ?" if eta is None else f"ETA {format_duration(eta)}"]
    if rate is not None:
      parts.append(f"{rate:.2f} step/s" if rate < 100 else f"{rate:,.0f} step/s")
    return ", ".join(parts + ([self._figures] if self._figures else []))

  def _show(self, refresh: bool = False) -> None:
    if self._bar is None:
      return
    self._bar.set_description_str(
        f"compiling batch shape {self._num_shapes} (not in the ETA) " if self._compiling else "",
        refresh=False)
    self._bar.set_postfix_str(self.text(), refresh=refresh)

  def compiling(self, num_shapes: int) -> None:
    """Says that the next step compiles the train step for a new batch shape, the
    `num_shapes`-th of this run: it shows at once, and that step is left out of the rates."""
    self._compiling, self._num_shapes = True, num_shapes
    self._show(refresh=True)

  def reset_clock(self) -> None:
    """Leaves the time since the last step out of every rate (call after an evaluation or a
    checkpoint write: it is no step's time)."""
    self._mark = self._clock()

  def advance(self, step: int) -> None:
    """Moves the bar to `step` steps done and times the steps since the last call (cheap: no
    device sync; with asynchronous dispatch the rate settles after a few steps)."""
    if step <= self._step:
      return  # No step since the last call: the time so far belongs to the next one.
    now = self._clock()
    done, seconds = step - self._step, now - self._mark
    if self._compiling:
      self._log_window[2] += done
      self._log_window[3] += seconds
    else:
      self._durations.append((done, seconds))
      self._log_window[0] += done
      self._log_window[1] += seconds
    self._step, self._mark, self._compiling = step, now, False
    self._show()
    if self._bar is not None:
      self._bar.update(done)  # Redraws (at most once a second) with the figures set above.

  def update(self, step: int, loss: float, learning_rate: float,
             tokens: float) -> tuple[float, float]:
    """Moves the bar to `step` (steps done), shows the latest figures, and measures the
    throughput of the steps since the last update.

    Args:
      step: number of steps completed.
      loss: mean training loss since the last update.
      learning_rate: current learning rate.
      tokens: target tokens processed since the last update.

    Returns:
      (steps per second, target tokens per second) over the steps since the last update that
      did not compile (the compiling steps' share of `tokens` taken out in proportion); over
      all of them when every one compiled.
    """
    self.advance(step)
    measured, seconds, compiled, compile_seconds = self._log_window
    self._log_window = [0, 0.0, 0, 0.0]
    if measured == 0 or seconds <= 0:  # Only compiling steps: their wall time is all there is.
      measured, seconds = measured + compiled, seconds + compile_seconds
      compiled = 0
    seconds = max(seconds, 1e-9)
    steps_per_second = measured / seconds
    tokens_per_second = tokens * measured / max(measured + compiled, 1) / seconds
    self._figures = (f"loss {loss:.3f}, lr {learning_rate:.2e}, "
                     f"{tokens_per_second:,.0f} tok/s")
    self._show()
    return steps_per_second, tokens_per_second

  def write(self, message: str) -> None:
    """Prints a line without breaking the bar."""
    if self._bar is not None:
      self._bar.write(message, file=self._file)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
