"""Input preparation shared by the model families: teacher-forcing shift, default positions and
segmentation for unpacked batches, and the per-call dropout key.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def shift_right(
    targets: jax.Array, bos_id: int, segmentation: jax.Array | None = None, pad_id: int = 0
) -> jax.Array:
  """Decoder inputs for teacher forcing: targets moved one step right, BOS first.

  With `segmentation` (packed rows), every segment starts with BOS and padding stays `pad_id`.

  Args:
    targets: int (B, T), target ids (ending in EOS, no BOS).
    bos_id: id written at the start of every segment.
    segmentation: optional int (B, T), 0 = padding, 1.. = example index within the row.
    pad_id: id written at padding positions when `segmentation` is given.

  Returns:
    int (B, T) decoder inputs.
  """
  targets = jnp.asarray(targets)
  if targets.ndim != 2:
    raise ValueError(f"targets must be (B, T), got shape {targets.shape}")
  shifted = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=bos_id)[:, :-1]
  if segmentation is None:
    return shifted
  segmentation = jnp.asarray(segmentation)
  if segmentation.shape != targets.shape:
    raise ValueError(f"segmentation shape {segmentation.shape} != targets shape {targets.shape}")
  previous = jnp.pad(segmentation, ((0, 0), (1, 0)))[:, :-1]
  shifted = jnp.where(segmentation != previous, bos_id, shifted)
  return jnp.where(segmentation == 0, pad_id, shifted).astype(targets.dtype)


def check_tokens(tokens: jax.Array, max_len: int, name: str) -> None:
  """Raises ValueError unless `tokens` is an int (B, T) array with T <= `max_len`."""
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{name} must be int (B, T), got {tokens.dtype} {tokens.shape}")
  if tokens.shape[1] > max_len:
    raise ValueError(f"{name} has length {tokens.shape[1]} > max_len={max_len}; positions "
                     "past max_len have no encoding (raise TransformerConfig.max_len)")


def default_segmentation(tokens: jax.Array, segmentation: jax.Array | None, pad_id: int):
  """`segmentation` if given, else 1 at non-`pad_id` tokens and 0 at padding; int32 (B, T)."""
  if segmentation is None:
    return (tokens != pad_id).astype(jnp.int32)
  if segmentation.shape != tokens.shape:
    raise ValueError(f"segmentation shape {segmentation.shape} != tokens shape {tokens.shape}")
  return segmentation.astype(jnp.int32)


def default_positions(tokens: jax.Array, positions: jax.Array | None) -> jax.Array:
  """`positions` if given, else 0..T-1 for every row; int32 (B, T)."""
  if positions is None:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  if positions.shape != tokens.shape:
    raise ValueError(f"positions shape {positions.shape} != tokens shape {tokens.shape}")
  return positions.astype(jnp.int32)


def dropout_rngs(
    rngs: nnx.Rngs | jax.Array | None, deterministic: bool, needs_rng: bool
) -> nnx.Rngs | None:
  """Normalizes the per-call dropout randomness.

  Args:
    rngs: an `nnx.Rngs` with a `dropout` stream, a raw key (wrapped as `nnx.Rngs(dropout=key)`),
      or None.
    deterministic: True means no dropout, so `rngs` is ignored.
    needs_rng: whether the model has any non-zero dropout rate.

  Returns:
    The `nnx.Rngs` to draw dropout keys from, or None when no dropout runs.
  """
  if deterministic or not needs_rng:
    return None
  if rngs is None:
    raise ValueError(
        "deterministic=False with non-zero dropout needs a dropout key: call the model with "
        "rngs=nnx.Rngs(dropout=key) or rngs=key"
    )
  if isinstance(rngs, nnx.Rngs):
    return rngs
  return nnx.Rngs(dropout=rngs)
