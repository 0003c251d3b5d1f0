"""The training state: one pytree holding everything a step reads and writes.

The NNX graph definition and the optax transformation are static; they are closed over by the
jitted steps, never stored here (flax examples/gemma `jax_train_step`).
"""

import jax
from flax import nnx
from flax import struct


@struct.dataclass
class TrainState:
  """Pytree of arrays; checkpointed whole so a resumed run is bit-for-bit the same run."""

  # Number of train steps taken (int32 scalar); also folded into the dropout key.
  step: jax.Array
  # Trainable parameters (nnx.Param variables), float32 unless param_dtype says otherwise.
  params: nnx.State
  # Every other model variable (not nnx.Param, not RNG streams); empty for the Transformer.
  model_state: nnx.State
  # Optimizer state (Adam moments, counts; accumulated gradients with gradient accumulation).
  opt_state: object
  # Base PRNG key (raw uint32[2]); dropout for step s uses fold_in(rng, s).
  rng: jax.Array


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """Splits a model into (graphdef, params, other variables), dropping RNG stream state.

  RNG streams are dropped because dropout keys come from `TrainState.rng` on every call.
  """
  graphdef, params, _, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
  return graphdef, params, model_state


def count_params(params: nnx.State) -> dict[str, int]:
  """Parameter counts per top-level group plus 'total'."""
  counts = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    group = str(getattr(path[0], "key", getattr(path[0], "name", path[0])))
    counts[group] = counts.get(group, 0) + int(leaf.size)
  counts["total"] = sum(counts.values())
  return counts
