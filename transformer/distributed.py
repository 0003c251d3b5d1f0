"""Multi-process runs through `jax.distributed`: when to initialize it, and process helpers.

One program runs per host (or per GPU); `jax.distributed.initialize` connects them, after which
`jax.devices()` lists the devices of every process and one mesh spans them all. `initialize`
decides whether to call it:

  1. explicit settings, from arguments (train.py flags) or the environment:
     JAX_COORDINATOR_ADDRESS (host:port of process 0; jax itself reads this variable too),
     JAX_NUM_PROCESSES and JAX_PROCESS_ID (jax has no variables for these two; we read them);
  2. otherwise a multi-process launch that jax detects on its own: a SLURM step with more than
     one task (`srun`), an Open MPI job with more than one rank (`mpirun`), a Cloud TPU slice of
     more than one host. jax then fills in the coordinator, process count and process id;
  3. otherwise nothing: a single process (one GPU server, a Colab TPU) needs no initialization.

On CPU, processes exchange collectives through gloo (`jax_cpu_collectives_implementation`), and
the training loop waits for each step there (`wait_on_cpu`).
`plan` is the pure decision (tested with fake environments); `initialize` acts on it.
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

MODES = ("auto", "on", "off")
ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# The variables by which jax recognizes a SLURM step and an Open MPI job
# (jax/_src/clusters/slurm_cluster.py, ompi_cluster.py).
_SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID")
_OMPI_VARIABLES = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE")


class DistributedConfigError(ValueError):
  """Inconsistent multi-process settings; the message names them."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize` does, and why.

  Attributes:
    initialize: whether `jax.distributed.initialize` is called.
    reason: a short human-readable explanation (logged).
    coordinator_address, num_processes, process_id: the explicit settings passed on (None:
      jax detects them from the cluster environment).
    local_device_ids: devices this process drives (None: jax's default).
  """

  initialize: bool
  reason: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def _int_setting(value, env_value: str | None, name: str, env_name: str) -> int | None:
  if value is not None:
    return int(value)
  if env_value is None or env_value == "":
    return None
  try:
    return int(env_value)
  except ValueError:
    raise DistributedConfigError(
        f"environment variable {env_name}={env_value!r} is not an integer ({name})") from None


def detect_cluster(environ: Mapping[str, str]) -> tuple[str, int] | None:
  """(name, number of processes) of a multi-process SLURM or Open MPI launch, else None.

  Uses the variables jax's own cluster detection reads, so that whenever this returns a cluster,
  `jax.distributed.initialize()` without arguments finds it too. (Cloud TPU slices are found by
  `_cloud_tpu_process_count`, which asks the TPU VM's metadata server.)
  """
  if all(v in environ for v in _SLURM_VARIABLES):
    tasks = _int_setting(None, environ["SLURM_NTASKS"], "number of tasks", "SLURM_NTASKS")
    if tasks and tasks > 1:
      return "SLURM", tasks
  if all(v in environ for v in _OMPI_VARIABLES):
    ranks = _int_setting(None, environ["OMPI_COMM_WORLD_SIZE"], "number of ranks",
                         "OMPI_COMM_WORLD_SIZE")
    if ranks and ranks > 1:
      return "Open MPI", ranks
  return None


def _cloud_tpu_process_count() -> int | None:
  """Hosts of the Cloud TPU slice this process runs on (None: not on a Cloud TPU VM).

  jax has no public API for this; its cluster detection (which `jax.distributed.initialize()`
  runs) lives in `jax._src.clusters`. If that moves, we fall back to None: TPU slices then still
  run multi-host through libtpu, only without jax's coordination service.
  """
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
    from jax._src.clusters import cloud_tpu_cluster  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if not getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False):
    return None
  for cluster in (cloud_tpu_cluster.GkeTpuCluster, cloud_tpu_cluster.GceTpuCluster):
    try:
      if cluster.is_env_present():
        return cluster.get_process_count()
    except Exception as e:  # Metadata server errors: behave as a single host, but say so.
      logging.warning("Cloud TPU cluster detection (%s) failed: %s", cluster.__name__, e)
      return None
  return None


def _settings(coordinator_address, num_processes, process_id, local_device_ids, environ):
  """(coordinator, count, index, devices): the explicit settings, arguments before environment."""
  coordinator = coordinator_address or environ.get(ENV_COORDINATOR_ADDRESS) or None
  count = _int_setting(num_processes, environ.get(ENV_NUM_PROCESSES), "num_processes",
                       ENV_NUM_PROCESSES)
  index = _int_setting(process_id, environ.get(ENV_PROCESS_ID), "process_id", ENV_PROCESS_ID)
  devices = tuple(int(d) for d in local_device_ids) if local_device_ids else None
  return coordinator, count, index, devices


def _check_settings(coordinator: str | None, count: int | None, index: int | None) -> None:
  """Raises DistributedConfigError for settings that are invalid on their own or together."""
  if count is not None and count < 1:
    raise DistributedConfigError(f"num_processes must be >= 1, got {count}")
  if index is not None and index < 0:
    raise DistributedConfigError(f"process_id must be >= 0, got {index}")
  if index is not None and count is not None and index >= count:
    raise DistributedConfigError(
        f"process_id={index} is not below num_processes={count}: process ids are "
        f"0..{count - 1}")
  if coordinator is not None and (":" not in coordinator
                                  or not coordinator.rsplit(":", 1)[1].isdigit()):
    raise DistributedConfigError(
        f"coordinator_address must be host:port (process 0's address and a free port), got "
        f"{coordinator!r}")


def _find_cluster(environ: Mapping[str, str], mode: str,
                  cloud_tpu_processes: int | None) -> tuple[str, int] | None:
  """(name, number of processes) of a detected SLURM, Open MPI or Cloud TPU launch, else None.

  The Cloud TPU metadata server is asked only in "auto" mode, when `cloud_tpu_processes` is None.
  """
  cluster = detect_cluster(environ)
  if cluster is None and mode == "auto" and cloud_tpu_processes is None:
    cloud_tpu_processes = _cloud_tpu_process_count()
  if cluster is None and cloud_tpu_processes and cloud_tpu_processes > 1:
    cluster = ("Cloud TPU slice", cloud_tpu_processes)
  return cluster


def _plan_for_cluster(explicit: Plan, cluster: tuple[str, int]) -> Plan:
  """The plan of a detected launch; an explicit num_processes must agree with it."""
  name, size = cluster
  if explicit.num_processes is not None and explicit.num_processes != size:
    raise DistributedConfigError(
        f"num_processes={explicit.num_processes} contradicts the {name} launch of {size} "
        "processes")
  return dataclasses.replace(explicit, reason=f"{name} with {size} processes (detected)")


def _plan_without_cluster(explicit: Plan, mode: str) -> Plan:
  """The plan when no launch was detected: explicit settings must be complete in "auto" mode."""
  count = explicit.num_processes
  given = {"coordinator_address": explicit.coordinator_address, "num_processes": count,
           "process_id": explicit.process_id}
  if count == 1 and mode == "auto":
    return Plan(False, "one process (num_processes=1)")
  if all(v is None for v in given.values()):
    if mode == "on":
      return dataclasses.replace(explicit, reason="--distributed=on: jax detects the settings")
    return Plan(False, "single process (no multi-process settings or cluster found)")
  missing = [name for name, value in given.items() if value is None]
  if missing and mode == "auto":
    set_names = ", ".join(f"{k}={v}" for k, v in given.items() if v is not None)
    verb = "is" if len(missing) == 1 else "are"
    raise DistributedConfigError(
        f"{set_names} is given but {' and '.join(missing)} {verb} not, and no SLURM, Open MPI "
        "or Cloud TPU launch was detected to supply it: pass --coordinator_address=HOST:PORT "
        "(process 0's address), --num_processes=N and --process_id=I to every process (or set "
        f"{ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
  reason = (f"{count} processes (explicit settings)" if not missing
            else "--distributed=on with partial settings (jax detects the rest)")
  return dataclasses.replace(explicit, reason=reason)


def plan(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    environ: Mapping[str, str] | None = None,
    cloud_tpu_processes: int | None = None,
) -> Plan:
  """Decides whether and how to initialize `jax.distributed` (pure; see `initialize`).

  Args:
    mode: "auto" (initialize for explicit settings or a detected multi-process launch), "on"
      (always initialize; jax must find what is not given) or "off" (never).
    coordinator_address: "host:port" of process 0; default $JAX_COORDINATOR_ADDRESS.
    num_processes: number of processes; default $JAX_NUM_PROCESSES.
    process_id: this process, in [0, num_processes); default $JAX_PROCESS_ID.
    local_device_ids: devices this process uses (default: jax's choice; $JAX_LOCAL_DEVICE_IDS
      is read by jax itself).
    environ: the environment (default os.environ).
    cloud_tpu_processes: hosts of the Cloud TPU slice, if on one (default: detected).

  Returns:
    The Plan.

  Raises:
    DistributedConfigError: unknown mode, or settings that contradict each other.
  """
  if mode not in MODES:
    raise DistributedConfigError(f"distributed mode must be one of {MODES}, got {mode!r}")
  if mode == "off":
    return Plan(False, "multi-process initialization is off (--distributed=off)")
  environ = os.environ if environ is None else environ
  coordinator, count, index, devices = _settings(coordinator_address, num_processes, process_id,
                                                 local_device_ids, environ)
  _check_settings(coordinator, count, index)
  explicit = Plan(True, "", coordinator, count, index, devices)
  cluster = _find_cluster(environ, mode, cloud_tpu_processes)
  if cluster is not None:
    return _plan_for_cluster(explicit, cluster)
  return _plan_without_cluster(explicit, mode)


def _configure_cpu() -> None:
  """Cross-process collectives on CPU need an implementation: gloo, which ships with jaxlib (and
  is jax 0.10's default). No effect on GPU / TPU devices."""
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout_s: int = 300,
) -> Plan:
  """Initializes `jax.distributed` when this is one of several processes (see `plan`).

  Must run before anything touches devices (jax.devices(), any computation). Calling it again
  after a successful initialization does nothing.

  Returns:
    The Plan that was carried out.

  Raises:
    DistributedConfigError: inconsistent settings.
    RuntimeError: jax's backends were already initialized (from jax.distributed.initialize).
  """
  if jax.distributed.is_initialized():
    return Plan(False, "jax.distributed was already initialized")
  decision = plan(mode, coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id, local_device_ids=local_device_ids)
  if not decision.initialize:
    logging.info("No multi-process initialization: %s.", decision.reason)
    return decision
  _configure_cpu()
  logging.info("Initializing jax.distributed: %s.", decision.reason)
  jax.distributed.initialize(
      coordinator_address=decision.coordinator_address,
      num_processes=decision.num_processes,
      process_id=decision.process_id,
      local_device_ids=list(decision.local_device_ids) if decision.local_device_ids else None,
      initialization_timeout=initialization_timeout_s,
  )
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return decision


def wait_on_cpu(tree):
  """Waits until `tree` is computed when several processes share CPU devices; returns `tree`.

  XLA's CPU runtime (jaxlib 0.10.2) launches each device's part of a program on a thread pool
  with as many threads as cores (at least one per device) and caps the programs in flight per
  device with a semaphore that it waits on inside those threads. When asynchronous dispatch queues
  many multi-device programs (e.g. the independent evaluation steps), the pool's threads can all
  end up waiting (for the semaphore, or in a gloo all-reduce for a peer whose part has no thread
  left) and every process hangs. Keeping one step in flight avoids it; GPUs and TPUs, which
  have no such pool, keep asynchronous dispatch.
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    jax.block_until_ready(tree)
  return tree


def is_main_process() -> bool:
  """Whether this process writes logs, metrics and files that exist once per run."""
  return jax.process_index() == 0


def broadcast_from_main(value: bool | int) -> int:
  """Process 0's integer `value` on every process (also a barrier); `value` itself if alone."""
  if jax.process_count() == 1:
    return int(value)
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def gather_from_all(value: bool | int) -> list[int]:
  """Every process's integer `value`, indexed by process (a collective; [value] if alone)."""
  if jax.process_count() == 1:
    return [int(value)]
  return [int(v) for v in multihost_utils.process_allgather(np.int32(value))]


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier of this `name` (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
