"""The errors of a run and the exit statuses the command-line programs turn them into."""

import math
import os

from transformer import storage

# Exit statuses of train.py, translate and evaluate (see README, "What survives what").
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


def interrupted_message(workdir: str) -> str:
  """What train.py prints when a second Ctrl-C stops it at once."""
  return ("error: interrupted again: stopped at once without saving; the checkpoints already in "
          f"{workdir if storage.is_remote(workdir) else os.path.abspath(workdir)}/checkpoints "
          "are intact. Rerun the same command to resume.")


def non_finite_loss(loss: float, grad_norm: float, *, first_step: int, step: int,
                    last_good_step: int | None, checkpoints: str) -> NonFiniteLossError:
  """The error of a loss or gradient that became NaN or infinite between two checks."""
  value = "non-finite" if math.isfinite(loss) else loss
  where = f"at step {step}" if first_step == step else f"between steps {first_step} and {step}"
  saved = (f"The last good checkpoint is step {last_good_step} in {checkpoints} (nothing later "
           "was saved)." if last_good_step is not None else "No checkpoint was saved.")
  return NonFiniteLossError(
      f"training loss became {value} (gradient norm {grad_norm}) {where}; training stopped. "
      f"{saved} Try a lower optimizer.learning_rate, a longer optimizer.warmup_steps, "
      "optimizer.grad_clip_norm=1.0, or model.dtype='float32'.")


def report(error: Exception, stream) -> int:
  """Prints `error: <message>` (one line) to `stream`; returns the exit status of the error:
  EXIT_USAGE for a UsageError, EXIT_FAILED for anything else."""
  print(f"error: {error}", file=stream)
  return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILED
