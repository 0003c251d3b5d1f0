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


@struct.dataclass
class InferenceState:
  """What decoding and evaluation read: a TrainState without optimizer state and RNG.

  Its fields have TrainState's names, so it restores from (a part of) a train checkpoint.
  """

  step: jax.Array  # Train steps the parameters have seen (int32 scalar).
  params: nnx.State  # As in TrainState.
  model_state: nnx.State  # As in TrainState.


def inference_view(state: "TrainState | InferenceState") -> InferenceState:
  """The InferenceState of `state` (the same arrays, nothing copied)."""
  return InferenceState(step=state.step, params=state.params, model_state=state.model_state)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """Splits a model into (graphdef, params, other variables), dropping RNG stream state.

  RNG streams are dropped because dropout keys come from `TrainState.rng` on every call.
  """
  graphdef, params, _, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
  return graphdef, params, model_state
