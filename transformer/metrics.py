"""Metric accumulation, BLEU and writers (metrics.jsonl, TensorBoard events, a progress bar).

Steps return metric *sums* and a denominator; `summarize` divides on the host at log time.
BLEU is sacrebleu's corpus BLEU over detokenized text (Papineni et al., 2002; Post, 2018).
"""

import errno
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import sacrebleu
import tensorboardX
import tqdm
from absl import logging

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


def train_scalars(sums: Mapping[str, jax.Array], *, learning_rate: float,
                  seconds: float) -> dict[str, float]:
  """The logged training metrics of the steps accumulated in `sums`.

  Args:
    sums: `accumulate`d train-step metrics (with `grad_norm_sum` and `num_steps`).
    learning_rate: of the last step.
    seconds: wall time of those steps.

  Returns:
    `summarize(sums, "train")` plus train/grad_norm (mean over the steps),
    train/learning_rate and train/steps_per_second.
  """
  scalars = summarize(sums, "train")
  num_steps = float(jax.device_get(sums["num_steps"]))
  scalars["train/grad_norm"] = float(jax.device_get(sums["grad_norm_sum"])) / num_steps
  scalars["train/learning_rate"] = learning_rate
  scalars["train/steps_per_second"] = num_steps / max(seconds, 1e-9)
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


def _append_line(fd: int, line: bytes, path: str) -> None:
  """Appends one whole line, or nothing: a failed or short write is cut off again.

  Raises:
    OSError: naming `path` (e.g. ENOSPC when the disk is full).
  """
  size = os.fstat(fd).st_size
  try:
    written = os.write(fd, line)
    if written != len(line):
      raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
  except OSError as e:
    try:
      os.ftruncate(fd, size)
    except OSError:
      pass  # The reader skips a torn last line, with a warning.
    raise OSError(e.errno, e.strerror, path) from e


def _cut_torn_tail(path: str) -> None:
  """Removes an incomplete last line (a write cut short by a crash) so appends start clean."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data.endswith(b"\n"):
      return
    keep = data.rfind(b"\n") + 1
    f.truncate(keep)
  logging.warning("%s ended in an incomplete line of %d bytes (an interrupted write); removed "
                  "it.", path, len(data) - keep)


def supersede_after(path: str, step: int) -> int:
  """Moves the records of steps after `step` from `path` to `path + SUPERSEDED_SUFFIX`.

  A run resumed from the checkpoint at `step` replays the later steps and logs them again; their
  earlier records are kept aside, not doubled.

  Returns:
    The number of records moved.
  """
  if not os.path.exists(path):
    return 0
  kept, later = [], []
  for record in read_jsonl(path):
    (later if record["step"] > step else kept).append(record)
  if not later:
    return 0
  with open(path + SUPERSEDED_SUFFIX, "a", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in later)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)
  os.replace(tmp, path)
  logging.info("Resuming at step %d: %d records of later steps (replayed now) moved from %s to "
               "%s.", step, len(later), path, path + SUPERSEDED_SUFFIX)
  return len(later)


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files (process 0 only).

  Each `write` appends one JSON object per line, e.g. {"step": 100, "train/loss": 3.1}, in a
  single write that either lands whole or is cut off again (a full disk raises an OSError
  naming the file, and leaves no torn line). TensorBoard events go to `workdir/tensorboard`
  through tensorboardX (no TensorFlow needed).
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
    self._fd = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      _cut_torn_tail(self.jsonl_path)
      if resume_step is not None:
        supersede_after(self.jsonl_path, resume_step)
      self._fd = os.open(self.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
    _append_line(self._fd, (json.dumps(record) + "\n").encode("utf-8"), self.jsonl_path)
    self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._enabled = False
      os.close(self._fd)
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  """Reads a metrics.jsonl file back as a list of dicts, one per line.

  A line that is not a JSON object with an integer "step" (a write torn by a crash or a full
  disk) is skipped with a warning naming it.
  """
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
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


class ProgressBar:
  """A tqdm bar showing step, loss, learning rate, tokens/s and ETA (process 0 only)."""

  def __init__(self, initial_step: int, total_steps: int, enabled: bool = True):
    self._bar = None
    self._last_time = time.perf_counter()
    if enabled:
      self._bar = tqdm.tqdm(
          total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
          file=sys.stderr, mininterval=1.0, smoothing=0.1,
      )

  def reset_clock(self) -> float:
    """Restarts the tokens/s clock (after an evaluation); returns the time now."""
    self._last_time = time.perf_counter()
    return self._last_time

  def advance(self, step: int) -> None:
    """Moves the bar to `step` steps done (cheap: no device sync)."""
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def update(self, step: int, loss: float, learning_rate: float, tokens: float) -> float:
    """Moves the bar to `step` (steps done) and shows the latest figures.

    Args:
      step: number of steps completed.
      loss: mean training loss since the last update.
      learning_rate: current learning rate.
      tokens: target tokens processed since the last update.

    Returns:
      Tokens per second since the last update.
    """
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    tokens_per_second = tokens / elapsed
    self._last_time = now
    self.advance(step)
    if self._bar is not None:
      self._bar.set_postfix(
          loss=f"{loss:.3f}", lr=f"{learning_rate:.2e}", tok_s=f"{tokens_per_second:,.0f}",
          refresh=False,
      )
    return tokens_per_second

  def write(self, message: str) -> None:
    """Prints a line without breaking the bar."""
    if self._bar is not None:
      self._bar.write(message, file=sys.stderr)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
