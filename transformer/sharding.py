"""Device mesh, logical-axis rules and shardings for the train state and batches.

Parameters carry logical axis names (`embed`, `vocab`, `heads`, `mlp`, ...) set by the model;
one rules table here maps them to the mesh axes `data`, `fsdp`, `tensor`. With the default mesh
(all devices on `data`) every parameter is replicated and the batch is split across devices.

In a multi-process run the mesh spans the devices of every process, ordered by process, and each
process feeds the block of batch rows its own devices hold (`process_batch_block`,
`make_global_batch`).
"""

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes). The batch is split over `data` and `fsdp` (FSDP shards
# the batch too, like data parallelism, and in addition the parameters over `embed`).
# Unlisted logical names are replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("length", None),
)

# Keys under which NNX Variables keep their logical axis names, newest flax first.
_SHARDING_METADATA_KEYS = ("out_sharding", "sharding_names", "sharding")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Fields are exactly the keys of `config.mesh` (see configs/default.py)."""

  data: int = -1  # Devices along the data-parallel axis; -1 means "all remaining devices".
  fsdp: int = 1  # Devices that shard parameters and optimizer state (FSDP-style) and the batch.
  tensor: int = 1  # Devices that shard heads / mlp / vocab dimensions (tensor parallelism).


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Mesh sizes for (data, fsdp, tensor), with at most one -1 filled in.

  Without a -1 the sizes may use fewer devices than available (e.g. data=1 for debugging).

  Raises:
    ValueError: if the sizes need more devices than `num_devices`, or cannot fill them.
  """
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got mesh={dataclasses.asdict(cfg)}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes must be positive or -1, got mesh={dataclasses.asdict(cfg)}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"cannot fill mesh={dataclasses.asdict(cfg)} with {num_devices} devices: "
          f"{num_devices} is not divisible by {known}"
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) > num_devices:
    raise ValueError(
        f"mesh={dataclasses.asdict(cfg)} needs {math.prod(sizes)} devices, "
        f"but only {num_devices} are available"
    )
  return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh with axes ('data', 'fsdp', 'tensor') over `devices` (default: all devices).

  The default devices are those of every process, ordered by (process, id): each process then
  holds one contiguous block of the batch rows (see `process_batch_block`). A multi-process mesh
  must use every device; with one process, sizes that multiply to fewer devices than given use
  the first ones (with a warning).
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  devices = list(devices)
  shape = resolve_mesh_shape(cfg, len(devices))
  if math.prod(shape) < len(devices) and jax.process_count() > 1:
    raise ValueError(
        f"mesh={dataclasses.asdict(cfg)} uses {math.prod(shape)} of the {len(devices)} devices, "
        f"but a run of {jax.process_count()} processes must use them all (every process feeds "
        "its devices); use -1 for one axis"
    )
  if math.prod(shape) < len(devices):
    logging.warning("Mesh %s uses %d of the %d devices.", shape, math.prod(shape), len(devices))
    devices = devices[:math.prod(shape)]
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_mesh_spec(
    logical_names: Sequence[str | None],
    shape: Sequence[int],
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = LOGICAL_AXIS_RULES,
) -> P:
  """Maps logical axis names of an array to a mesh PartitionSpec.

  A dimension stays replicated when its name has no rule, its mesh axes have size 1, its size
  is not divisible by the mesh axes, or one of the mesh axes is already used by another dim.

  Args:
    logical_names: one logical name (or None) per array dimension.
    shape: the array shape.
    mesh: the device mesh.
    rules: (logical name, mesh axis or axes or None) pairs; the first match wins.

  Returns:
    A PartitionSpec with one entry per dimension.
  """
  if len(logical_names) != len(shape):
    raise ValueError(f"logical names {tuple(logical_names)} do not match shape {tuple(shape)}")
  table = {}
  for name, axes in rules:
    table.setdefault(name, axes)
  used = set()
  spec = []
  for name, dim in zip(logical_names, shape):
    axes = table.get(name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or dim % size:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def _logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  metadata = variable.get_metadata()
  for key in _SHARDING_METADATA_KEYS:
    names = metadata.get(key)
    if names is not None and not isinstance(names, (NamedSharding, P)):
      return tuple(names)
  return None


def get_shardings(
    tree,
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = LOGICAL_AXIS_RULES,
):
  """NamedShardings for every array of `tree` (abstract or concrete), from logical names.

  NNX Variables (parameters, and optimizer moments, which optax builds with the same Variable
  structure) are sharded by their logical axis names; every other leaf is replicated.

  Args:
    tree: a pytree whose leaves are arrays or jax.ShapeDtypeStruct, possibly inside NNX
      Variables (e.g. a TrainState from `jax.eval_shape`).
    mesh: the device mesh.
    rules: logical-axis rules.

  Returns:
    A pytree of the same structure with a NamedSharding per leaf.
  """
  replicated = NamedSharding(mesh, P())

  def for_variable(variable):
    names = _logical_names(variable)

    def leaf_sharding(leaf):
      if names is None or len(names) != len(leaf.shape):
        return replicated
      return NamedSharding(mesh, logical_to_mesh_spec(names, leaf.shape, mesh, rules))

    return jax.tree.map(leaf_sharding, variable)

  def for_node(node):
    if isinstance(node, nnx.Variable):
      return for_variable(node)
    return replicated

  return jax.tree.map(for_node, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of (B, ...) batch arrays: B split over the `data` and `fsdp` axes."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that puts a full copy on every device."""
  return NamedSharding(mesh, P())


@functools.cache
def process_batch_block(mesh: jax.sharding.Mesh,
                        process_index: int | None = None) -> tuple[int, int]:
  """Which rows of every global batch a process feeds: block `index` of `count` equal blocks.

  The batch dimension is split over the mesh axes `data` and `fsdp`; a process feeds the rows
  its devices hold. With one process that is block 0 of 1. With P processes whose devices sit
  in one contiguous run of the mesh (as `make_mesh` orders them) it is block p of P; processes
  that share batch rows (a `tensor` axis across processes) feed the same block.

  Args:
    mesh: the device mesh.
    process_index: the process (default: this one).

  Returns:
    (index, count): the process feeds global rows [index * B / count, (index + 1) * B / count).

  Raises:
    ValueError: if the process has no device in the mesh, or its rows are not one contiguous
      block of a uniform split (a hand-made device order).
  """
  process_index = jax.process_index() if process_index is None else process_index
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  indices = batch_sharding(mesh).devices_indices_map((shards,))
  rows = sorted({indices[d][0].indices(shards)[:2] for d in mesh.devices.flat
                 if d.process_index == process_index})
  if not rows:
    raise ValueError(f"process {process_index} has no device in the mesh {dict(mesh.shape)}")
  start, stop = rows[0][0], rows[-1][1]
  size = stop - start
  covered = sum(b - a for a, b in rows)
  if covered != size or shards % size or start % size:
    raise ValueError(
        f"process {process_index} holds batch shards {rows} of {shards}: not one contiguous "
        "block of an even split; build the mesh with sharding.make_mesh (devices ordered by "
        "process)"
    )
  return start // size, shards // size


def make_global_batch(
    batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
  """Turns this process's part of a batch into global arrays sharded over the batch axes.

  Args:
    batch: per-process numpy arrays, each with leading dimension B_local: the block of rows
      `process_batch_block(mesh)` names. B_local times the number of blocks must be divisible
      by the number of batch shards.
    mesh: the device mesh.

  Returns:
    Global jax.Arrays with leading dimension B_local * number of blocks.
  """
  sharding = batch_sharding(mesh)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  _, blocks = process_batch_block(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if (value.shape[0] * blocks) % shards:
      raise ValueError(
          f"batch[{key!r}] has {value.shape[0]} rows per process, not divisible across "
          f"{shards} batch shards (mesh data x fsdp); change the batch size"
      )
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def gather_batch_rows(rows: np.ndarray, mesh: jax.sharding.Mesh) -> np.ndarray:
  """Every process's `rows` (B_local, ...) in global batch order: (B, ...) on every process.

  A collective: every process must call it, with arrays of the same shape.
  """
  global_rows = make_global_batch({"rows": rows}, mesh)["rows"]
  return np.asarray(multihost_utils.process_allgather(global_rows, tiled=True))
