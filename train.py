r"""Trains, evaluates and checkpoints a Transformer (Vaswani et al., 2017).

  python train.py --workdir=runs/multi30k                       # configs/multi30k.py
  python train.py --config=configs/copy.py --workdir=runs/copy --config.training.num_train_steps=300

Rerunning a command with the same --workdir resumes from its latest checkpoint; SIGTERM or
Ctrl-C saves a checkpoint first.

JAX's own options are flags too, as in the Flax examples: --jax_compilation_cache_dir=DIR keeps
compiled steps across runs, --jax_debug_nans stops at the first NaN, --jax_platforms=cpu, ...
(`python train.py --helpfull` lists them).

Exit status: 0 finished (or already finished); 1 an error (the message says which checkpoint is
intact); 2 a bad flag, config or workdir (nothing written); 75 stopped by SIGTERM or Ctrl-C with
a checkpoint saved (rerun to resume); 130 a second Ctrl-C (stopped at once, earlier checkpoints
intact).

Several hosts run one copy of this program each (see README, "Many hosts"). Under SLURM
(`srun`), Open MPI (`mpirun`) or on a Cloud TPU slice the processes find each other by
themselves; elsewhere give every process the same coordinator and count, and its own id:

  python train.py --workdir=/shared/run --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0     # and --process_id=1 on the second host
"""

import importlib.util
import logging as std_logging
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from transformer import distributed
from transformer import provenance
from transformer.training import errors
from transformer.training import loop
from transformer.training import run_config

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "multi30k.py")


def _config_path(argv: list[str]) -> str:
  """The config file named by --config (or the default), without a `:argument` suffix."""
  path = _DEFAULT_CONFIG
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  if not os.path.isfile(path) and ":" in path:
    path = path.rsplit(":", 1)[0]
  return path


def _load_config(argv: list[str]):
  """The config file named by --config (or the default), loaded without overrides."""
  spec = importlib.util.spec_from_file_location("_train_config", _config_path(argv))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().to_dict()


def _fail(status: int, message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _check_config_file(argv: list[str]) -> None:
  """Exits (status 2) when the --config file is missing or does not load."""
  path = _config_path(argv)
  if not os.path.isfile(path):
    _fail(errors.EXIT_USAGE, f"--config file {path} does not exist")
  try:
    _load_config(argv)
  except Exception as e:  # Whatever the user's file raises: one line, not a traceback.
    _fail(errors.EXIT_USAGE, f"--config file {path} does not load: {type(e).__name__}: {e}")


def _check_overrides(argv: list[str]) -> None:
  """Exits with the list of valid fields when a --config.X override names no config field."""
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not overrides:
    return
  config = _load_config(argv)
  for override in overrides:
    message = run_config.explain_unknown_field(config, override)
    if message:
      _fail(errors.EXIT_USAGE, message)


if __name__ == "__main__":
  _check_config_file(sys.argv)
  _check_overrides(sys.argv)  # Before DEFINE_config_file, which applies overrides at once.

_WORKDIR = flags.DEFINE_string("workdir", "runs/multi30k", "Directory for checkpoints, logs, "
                               "the tokenizer and metrics; reused to resume.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Config file; override fields with --config.SECTION.FIELD=VALUE.",
    lock_config=True,
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", distributed.MODES,
    "Multi-process initialization through jax.distributed: auto (when the flags below, their "
    "environment variables, or a SLURM / Open MPI / Cloud TPU multi-process launch say so), "
    "on (always; jax detects what is not given) or off.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, the same for every process "
    f"(default ${distributed.ENV_COORDINATOR_ADDRESS}).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, f"Number of processes (default ${distributed.ENV_NUM_PROCESSES}).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process, 0 .. num_processes-1 "
    f"(default ${distributed.ENV_PROCESS_ID}).")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None, "Devices this process drives, e.g. 0,1,2,3 (default: jax's "
    "choice; under SLURM one GPU per task, numbered by SLURM_LOCALID).")


class _QuietLibraries(std_logging.Filter):
  """Keeps the per-save and per-file INFO chatter of orbax and of the Cloud Storage client
  (fsspec, gcsfs) out of the console (their warnings still show)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        f"/{library}/" in record.pathname for library in ("orbax", "fsspec", "gcsfs"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    local_device_ids = [int(d) for d in _LOCAL_DEVICE_IDS.value or []]
    distributed.initialize(
        _DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        local_device_ids=local_device_ids or None)
  except ValueError as e:  # DistributedConfigError, or a --local_device_ids entry.
    _fail(errors.EXIT_USAGE, str(e))
  if not distributed.is_main_process():
    logging.set_verbosity(logging.WARNING)  # Process 0 reports; the others only warn.
  logging.info("Running %s", provenance.describe(provenance.environment()))
  logging.info("Config:\n%s", _CONFIG.value)
  try:
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                      exit_on_second_interrupt=True)
  except errors.UsageError as e:
    _fail(errors.EXIT_USAGE, str(e))
  except errors.TrainingError as e:
    _fail(errors.EXIT_FAILED, str(e))
  except KeyboardInterrupt:  # Ctrl-C before training started.
    print(errors.interrupted_message(_WORKDIR.value), file=sys.stderr, flush=True)
    os._exit(errors.EXIT_INTERRUPTED)  # Not sys.exit: no waiting on background threads.
  if summary["stopped_by"] in ("SIGTERM", "SIGINT"):
    print(f"Stopped by {summary['stopped_by']} at step {summary['final_step']} with a checkpoint "
          f"saved; rerun the same command to resume (exit status {errors.EXIT_STOPPED}).",
          file=sys.stderr, flush=True)
    sys.exit(errors.EXIT_STOPPED)


if __name__ == "__main__":
  jax.config.config_with_absl()  # --jax_* flags.
  app.run(main)
