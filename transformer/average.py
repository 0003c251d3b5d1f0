r"""Averages a run's checkpoints into a parameters-only run directory (Vaswani et al., 2017,
section 6.1; as fairseq's scripts/average_checkpoints.py).

  python -m transformer.average --workdir=runs/multi30k --last_k=5 --output=runs/multi30k_avg5
  python -m transformer.average --workdir=runs/multi30k --last_k=5 --upper_bound=20000 \
      --output=runs/multi30k_avg5_20k
  python -m transformer.average --workdir=runs/multi30k --last_k=5 --around_best \
      --output=runs/multi30k_best5

Averages the parameters of the last k kept checkpoints (with --upper_bound, the last k at or
below that step; with --around_best, the k nearest the best checkpoint by training.best_metric,
the best included). --output gets config.json, the tokenizer, averaged_from.json (the source
run and the steps) and checkpoints/<last averaged step>/ holding the averaged parameters with
the latest averaged checkpoint's step; no optimizer state, so it translates and evaluates like
any run (`python -m transformer.translate`, `python -m transformer.evaluate`,
`transformer.Translator.from_workdir`) but cannot be trained further.

Prints one JSON object. The source run is only read; --output is written in a temporary sibling
directory and renamed at the end, so it is complete or absent. Exit status: 0 written; 1 a
checkpoint cannot be read; 2 a bad flag, workdir or output (nothing written).
"""

import datetime
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import TextIO

from absl import app
from absl import flags

from transformer import checkpointing
from transformer import data as data_lib
from transformer import metrics as metrics_lib
from transformer import storage
from transformer.training import errors
from transformer.training import resume
from transformer.training import run_config
from transformer.training import runs

# What a run keeps its vocabulary in (synthetic datasets have neither).
_TOKENIZER_PATHS = (data_lib.TOKENIZER_FILE, data_lib.tokenizer.MARIAN_DIR)


def select_steps(available: Sequence[int], last_k: int, *, upper_bound: int | None = None,
                 best_step: int | None = None, where: str = "the run") -> list[int]:
  """The checkpoint steps to average, ascending.

  Args:
    available: the kept checkpoint steps.
    last_k: how many to average (>= 1).
    upper_bound: take the last k at or below this step.
    best_step: take the k nearest this step by |step - best_step| (ties to the earlier).
    where: the checkpoint directory, for the error message.

  Returns:
    k steps from `available`.

  Raises:
    errors.UsageError: fewer than k steps qualify (the message lists them).
  """
  available = sorted(available)
  candidates = available
  if upper_bound is not None:
    candidates = [s for s in available if s <= upper_bound]
  if len(candidates) < last_k:
    bound = f" at or below step {upper_bound}" if upper_bound is not None else ""
    raise errors.UsageError(
        f"--last_k={last_k} needs {last_k} checkpoints{bound}, but {where} has "
        f"{len(candidates)}: {candidates}" + (f" (of {available})" if bound else ""))
  if best_step is not None:
    nearest = sorted(candidates, key=lambda s: (abs(s - best_step), s))
    return sorted(nearest[:last_k])
  return candidates[-last_k:]


def best_checkpoint_step(workdir: str, metric: str, available: Sequence[int]) -> int:
  """The kept checkpoint step with the best `metric` recorded in <workdir>/metrics.jsonl.

  Raises:
    errors.UsageError: no kept checkpoint has a recorded value of `metric`.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  values = {}  # By step; a step recorded twice (a resumed run) keeps its last value.
  if storage.exists(path):
    for record in metrics_lib.read_jsonl(path):
      value = record.get(metric)
      if record["step"] in available and isinstance(value, (int, float)):
        values[record["step"]] = value
  if not values:
    raise errors.UsageError(
        f"--around_best: {path} records no {metric} (training.best_metric) at a kept "
        f"checkpoint step {list(available)}; use --last_k alone or with --upper_bound")
  best = None
  for step, value in sorted(values.items()):
    if metrics_lib.improves(metric, value, best):
      best = (value, step)
  return best[1]


def _check_flags(last_k: int, upper_bound: int | None, around_best: bool) -> None:
  if last_k < 1:
    raise errors.UsageError(f"--last_k must be >= 1, got {last_k}")
  if upper_bound is not None and around_best:
    raise errors.UsageError("give --upper_bound or --around_best, not both")


def _check_output(workdir: str, output: str) -> None:
  """Refuses an --output that is the run itself or exists and is not an empty directory."""
  def real(path):
    return path if storage.is_remote(path) else os.path.realpath(path)

  real_output, real_workdir = real(output), real(workdir)
  if (real_output == real_workdir
      or real_output.startswith(os.path.join(real_workdir, "checkpoints") + "/")):
    raise errors.UsageError(f"--output {output} is the run itself (or inside its checkpoints); "
                            "choose a new directory")
  if storage.isfile(output) or (storage.isdir(output) and storage.listdir(output)):
    raise errors.UsageError(f"--output {output} exists and is not an empty directory; refusing "
                            "to overwrite it (choose a new directory)")


def _read_run(workdir: str) -> tuple[dict, run_config.RunConfig]:
  """(config.json as a dict, typed config) of a train.py workdir (errors.UsageError if none)."""
  if not storage.isdir(workdir):
    raise errors.UsageError(f"--workdir {workdir} does not exist (or is not a directory)")
  try:
    saved = checkpointing.read_config_json(workdir)
  except ValueError as e:
    raise errors.UsageError(f"{workdir}/config.json is not valid JSON: {e}") from e
  if saved is None:
    raise errors.UsageError(f"--workdir {workdir} has no config.json: it is not a train.py run")
  try:
    return saved, run_config.parse_config(saved)
  except (TypeError, ValueError) as e:
    raise errors.UsageError(f"{workdir}/config.json is not a usable run config: {e}") from e


def _averaged_state(cfg: run_config.RunConfig, workdir: str, reader: checkpointing.Checkpointer,
                    steps: list[int]):
  """The InferenceState of `steps` averaged (errors.TrainingError if one cannot be read)."""
  run = runs.setup_run(cfg, workdir, training=False)
  abstract = run.setup.abstract_inference_state_with_shardings()
  try:
    state, _ = reader.average(steps, abstract)
  except Exception as e:  # Any read failure: say which steps, in one line.
    raise errors.TrainingError(
        f"cannot average the checkpoints at steps {steps} of {workdir}: {type(e).__name__}: "
        f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
  return state


def _write_run(target: str, workdir: str, config: dict, state, steps: list[int]) -> None:
  """Writes config.json, the tokenizer, averaged_from.json and the one checkpoint to `target`."""
  storage.copy_tree(os.path.join(workdir, "config.json"), os.path.join(target, "config.json"))
  for name in _TOKENIZER_PATHS:
    source = os.path.join(workdir, name)
    if storage.exists(source):
      storage.copy_tree(source, os.path.join(target, name))
  writer = checkpointing.Checkpointer(os.path.join(target, "checkpoints"), max_to_keep=1,
                                      best_metric=None, async_save=False)
  try:
    if not writer.save(steps[-1], state, config=config):
      raise errors.TrainingError(f"the average of steps {steps} holds NaN or infinite values; "
                                 "nothing was written")
    writer.wait()
  finally:
    writer.close()
  provenance = {"workdir": workdir, "steps": steps,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  storage.write_atomic(os.path.join(target, resume.AVERAGED_FROM),
                       json.dumps(provenance, indent=2))


def _write_atomically(output: str, write) -> None:
  """Calls write(tmp) on a temporary sibling of `output`, then renames it to `output`; on any
  failure the temporary directory is removed and `output` is left as it was.

  Cloud Storage has no directory rename (a "move" copies every object), so there `output` is
  written in place and removed again on a failure.
  """
  if storage.is_remote(output):
    try:
      write(output)
    except BaseException:
      storage.remove_tree(output)
      raise
    return
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=parent)
  try:
    write(tmp)
    os.replace(tmp, output)  # An empty directory at `output` is replaced too.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def average_checkpoints(workdir: str, output: str, *, last_k: int = 5,
                        upper_bound: int | None = None, around_best: bool = False) -> dict:
  """Writes the average of a run's checkpoints as a parameters-only run directory.

  Args:
    workdir: a directory written by `train.py` (only read).
    output: the new directory; must not exist or be empty.
    last_k: number of checkpoints averaged.
    upper_bound: average the last k checkpoints at or below this step.
    around_best: average the k checkpoints nearest the best one (training.best_metric in
      metrics.jsonl, among the kept checkpoints), the best included.

  Returns:
    {"workdir", "output", "steps" (averaged, ascending), "step" (of the written checkpoint)}.

  Raises:
    errors.UsageError: bad arguments, no run in `workdir`, too few checkpoints, or an unusable
      `output` (nothing was written).
    errors.TrainingError: a checkpoint cannot be read (nothing was written).
  """
  try:
    workdir, output = storage.normalize(workdir), storage.normalize(output)
  except ValueError as e:
    raise errors.UsageError(str(e)) from e
  _check_flags(last_k, upper_bound, around_best)
  config, cfg = _read_run(workdir)
  _check_output(workdir, output)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if not checkpointing.steps_of(checkpoint_dir):
    raise errors.UsageError(f"{checkpoint_dir} holds no checkpoint")
  reader = checkpointing.Checkpointer(checkpoint_dir,
                                      max_to_keep=cfg.training.max_checkpoints_to_keep,
                                      best_metric=cfg.training.best_metric, read_only=True)
  try:
    available = reader.all_steps()
    best = (best_checkpoint_step(workdir, cfg.training.best_metric, available)
            if around_best else None)
    steps = select_steps(available, last_k, upper_bound=upper_bound, best_step=best,
                         where=checkpoint_dir)
    state = _averaged_state(cfg, workdir, reader, steps)
  finally:
    reader.close()
  _write_atomically(output, lambda tmp: _write_run(tmp, workdir, config, state, steps))
  return {"workdir": workdir, "output": output, "steps": steps, "step": steps[-1]}


def run_command(workdir: str, output: str, *, last_k: int, upper_bound: int | None,
                around_best: bool, stdout: TextIO, stderr: TextIO) -> int:
  """The command: averages, prints the result as JSON; returns the exit status (0, 1 or 2)."""
  try:
    result = average_checkpoints(workdir, output, last_k=last_k, upper_bound=upper_bound,
                                 around_best=around_best)
  except (errors.TrainingError, OSError) as e:  # UsageError included: exit 2.
    return errors.report(e, stderr)
  print(json.dumps(result), file=stdout)
  return 0


def define_flags() -> None:
  """Defines the command's flags (called only when run as a program, never at import)."""
  flags.DEFINE_string("workdir", None, "Run directory written by train.py (only read).",
                      required=True)
  flags.DEFINE_string("output", None, "New directory for the averaged run (must not exist or "
                      "be empty).", required=True)
  flags.DEFINE_integer("last_k", 5, "Number of checkpoints averaged.")
  flags.DEFINE_integer("upper_bound", None, "Average the last k checkpoints at or below this "
                       "step.")
  flags.DEFINE_boolean("around_best", False, "Average the k checkpoints nearest the best one "
                       "(training.best_metric), the best included.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  sys.exit(run_command(values.workdir, values.output, last_k=values.last_k,
                       upper_bound=values.upper_bound, around_best=values.around_best,
                       stdout=sys.stdout, stderr=sys.stderr))


if __name__ == "__main__":
  define_flags()
  app.run(main)
