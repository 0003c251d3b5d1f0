"""Scaled dot-product and multi-head attention of "Attention Is All You Need" (section 3.2), with
pure mask helpers and an explicit key/value cache for incremental decoding.

Masks are boolean, True = "may attend", shaped (B, 1, T, S) so they broadcast over heads.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from transformer.model import layers

# Kernels of `dot_product_attention`, the values `TransformerConfig.attention_impl` accepts.
IMPLEMENTATIONS = ("xla", "cudnn", "reference")


def make_causal_mask(length: int) -> jax.Array:
  """Lower-triangular mask: query i may attend to keys j <= i.

  Args:
    length: T.

  Returns:
    bool (1, 1, T, T).
  """
  idx = jnp.arange(length)
  return (idx[:, None] >= idx[None, :])[None, None]


def make_padding_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
  """Mask that lets valid queries attend to valid keys only.

  Args:
    query_valid: bool (B, T), True at real (non-padding) tokens.
    key_valid: bool (B, S).

  Returns:
    bool (B, 1, T, S).
  """
  return (query_valid[:, :, None] & key_valid[:, None, :])[:, None]


def make_segment_mask(query_segmentation: jax.Array, key_segmentation: jax.Array) -> jax.Array:
  """Mask for packed rows: attend only within the same segment; segment 0 is padding.

  For unpacked batches (segmentation 1 on tokens, 0 on padding) this equals the padding mask.

  Args:
    query_segmentation: int (B, T), 0 = padding, 1.. = example index within the row.
    key_segmentation: int (B, S).

  Returns:
    bool (B, 1, T, S).
  """
  same = query_segmentation[:, :, None] == key_segmentation[:, None, :]
  valid = (query_segmentation[:, :, None] > 0) & (key_segmentation[:, None, :] > 0)
  return (same & valid)[:, None]


def _mask_value(dtype) -> float:
  # Finite (not -inf) so a fully masked row gives a uniform softmax, never NaN; the same
  # constant as jax.nn.dot_product_attention, so both paths agree on such rows.
  return -0.7 * float(jnp.finfo(dtype).max)


def reference_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """softmax(Q K^T / sqrt(H)) V in plain jnp, also returning the attention weights.

  Args:
    query: (B, T, N, H).
    key: (B, S, N, H).
    value: (B, S, N, H).
    mask: bool broadcastable to (B, N, T, S), True = attend; None attends everywhere.

  Returns:
    (output (B, T, N, H) in the dtype of `value`, weights float32 (B, N, T, S)).
  """
  logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(1.0 / math.sqrt(query.shape[-1]))
  if mask is not None:
    logits = jnp.where(mask, logits, _mask_value(jnp.float32))
  weights = jax.nn.softmax(logits, axis=-1)  # float32 softmax for all compute dtypes.
  out = jnp.einsum("bnts,bsnh->btnh", weights.astype(value.dtype), value)
  return out, weights


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    implementation: str = "xla",
) -> jax.Array:
  """Scaled dot-product attention softmax(Q K^T / sqrt(H)) V with a boolean mask.

  Args:
    query: (B, T, N, H).
    key: (B, S, N, H).
    value: (B, S, N, H).
    mask: bool broadcastable to (B, N, T, S), True = attend; None attends everywhere.
    implementation: "xla" (`jax.nn.dot_product_attention`, any backend), "cudnn" (the same
      call with the fused cuDNN kernel: GPU only, float16/bfloat16 inputs) or "reference"
      (`reference_attention`).

  Returns:
    (B, T, N, H) in the dtype of `query`.

  Raises:
    ValueError: for an unknown implementation, or "cudnn" off GPU or in float32.
  """
  if implementation == "reference":
    return reference_attention(query, key, value, mask)[0]
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  if implementation == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError(
          "attention_impl='cudnn' needs a GPU, but the JAX backend is "
          f"{jax.default_backend()!r}; use attention_impl='xla' on CPU and TPU"
      )
    if query.dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError(
          f"attention_impl='cudnn' needs bfloat16 or float16 compute, got {query.dtype}; "
          "set TransformerConfig(dtype='bfloat16') or use attention_impl='xla'"
      )
  if mask is not None:
    mask = jnp.broadcast_to(mask, (query.shape[0], 1, query.shape[1], key.shape[1]))
  return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=implementation)


def _single_query_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None
) -> jax.Array:
  """`dot_product_attention` for one query position (T = 1), as multiply-and-reduce.

  Decoding steps have T = 1, where a dot is a batch of B * N matrix-vector products that XLA
  on CPU runs as many tiny GEMM calls (cross-attention of a beam-4 step measured ~5x slower; see
  bench/RESULTS.md). Written elementwise, each product is one fused loop over the keys/values.

  Args:
    query: (B, 1, N, H).
    key: (B, S, N, H).
    value: (B, S, N, H).
    mask: bool broadcastable to (B, N, 1, S), or None.

  Returns:
    (B, 1, N, H) in the dtype of `query`.
  """
  scale = jnp.float32(1.0 / math.sqrt(query.shape[-1]))
  q = query[:, 0].astype(jnp.float32) * scale  # (B, N, H)
  logits = jnp.sum(q[:, None] * key.astype(jnp.float32), axis=-1)  # (B, S, N)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (query.shape[0], query.shape[2], 1, key.shape[1]))
    logits = jnp.where(jnp.transpose(mask[:, :, 0], (0, 2, 1)), logits,
                       _mask_value(jnp.float32))  # mask (B, N, S) -> (B, S, N)
  weights = jax.nn.softmax(logits, axis=1)  # float32 softmax over S, (B, S, N)
  out = jnp.sum(weights[..., None] * value.astype(jnp.float32), axis=1)  # (B, N, H)
  return out[:, None].astype(query.dtype)


class MultiHeadAttention(nnx.Module):
  """Multi-head attention (section 3.2.2): N heads of width H, then an output projection.

  One module serves encoder self-attention, decoder causal self-attention and cross-attention;
  what differs is the key/value input and the mask, both call arguments.
  """

  def __init__(
      self,
      num_heads: int,
      embed_dim: int,
      *,
      dropout_rate: float = 0.0,
      implementation: str = "xla",
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds Q/K/V kernels (D, N, H), biases (N, H), output kernel (N, H, D) and bias (D,).

    Args:
      num_heads: N.
      embed_dim: D, divisible by N; H = D / N.
      dropout_rate: dropout on attention weights (0 in the paper).
      implementation: "xla", "cudnn" or "reference" (see `dot_product_attention`).
      dtype: compute dtype.
      param_dtype: storage dtype.
      rngs: random streams for initialization.
    """
    if embed_dim % num_heads:
      raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, "
                       f"got {implementation!r}")
    self.num_heads = num_heads
    self.head_dim = embed_dim // num_heads
    self.dropout_rate = dropout_rate
    self.implementation = implementation
    self.dtype = dtype
    n, h = num_heads, self.head_dim
    # Glorot over the fused (D, N*H) matrix, as for a single D x D projection.
    qkv_init = jax.nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))
    out_init = jax.nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform", in_axis=(0, 1), out_axis=2)
    zeros = jax.nn.initializers.zeros
    for name in ("query", "key", "value"):
      setattr(self, f"{name}_kernel", layers.make_param(
          rngs, qkv_init, (embed_dim, n, h), ("embed", "heads", "kv"), param_dtype))
      setattr(self, f"{name}_bias", layers.make_param(
          rngs, zeros, (n, h), ("heads", "kv"), param_dtype))
    self.out_kernel = layers.make_param(
        rngs, out_init, (n, h, embed_dim), ("heads", "kv", "embed"), param_dtype)
    self.out_bias = layers.make_param(rngs, zeros, (embed_dim,), ("embed",), param_dtype)

  def _project(self, x: jax.Array, name: str) -> jax.Array:
    dt = self.dtype
    kernel = getattr(self, f"{name}_kernel")[...].astype(dt)
    bias = getattr(self, f"{name}_bias")[...].astype(dt)
    return jnp.einsum("btd,dnh->btnh", x.astype(dt), kernel) + bias  # (B, T, N, H)

  def project_query(self, x: jax.Array) -> jax.Array:
    """Queries (B, T, N, H) for inputs x (B, T, D)."""
    return self._project(x, "query")

  def project_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values, each (B, S, N, H), for inputs x (B, S, D)."""
    return self._project(x, "key"), self._project(x, "value")

  def attend(
      self,
      query: jax.Array,
      key: jax.Array,
      value: jax.Array,
      mask: jax.Array | None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Attention over projected heads, then the output projection.

    Args:
      query: (B, T, N, H).
      key: (B, S, N, H).
      value: (B, S, N, H).
      mask: bool broadcastable to (B, N, T, S), or None.
      deterministic: True disables attention dropout.
      rngs: `dropout` stream, needed when dropout is active.
      sow_weights: store float32 weights (B, N, T, S) as `nnx.Intermediate` named
        `attention_weights` (the explicit softmax path; for inspection, not speed).

    Returns:
      (B, T, D) in the compute dtype.
    """
    use_dropout = self.dropout_rate > 0.0 and not deterministic
    if sow_weights or use_dropout:
      # Fused kernels never materialize the weights, so this path computes them explicitly.
      _, weights = reference_attention(query, key, value, mask)
      if sow_weights:
        self.sow(nnx.Intermediate, "attention_weights", weights)
      if use_dropout:
        if rngs is None:
          raise ValueError("attention dropout with deterministic=False needs rngs with a "
                           "'dropout' stream")
        weights = layers.Dropout(self.dropout_rate)(weights, deterministic=False, rngs=rngs)
      out = jnp.einsum("bnts,bsnh->btnh", weights.astype(value.dtype), value)
    elif query.shape[1] == 1 and self.implementation == "xla":
      out = _single_query_attention(query, key, value, mask)
    else:
      out = dot_product_attention(query, key, value, mask, implementation=self.implementation)
    dt = self.dtype
    out = jnp.einsum("btnh,nhd->btd", out, self.out_kernel[...].astype(dt))  # (B, T, D)
    return out + self.out_bias[...].astype(dt)

  def __call__(
      self,
      inputs_q: jax.Array,
      inputs_kv: jax.Array,
      mask: jax.Array | None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Full-sequence attention of `inputs_q` over `inputs_kv`.

    Args:
      inputs_q: (B, T, D).
      inputs_kv: (B, S, D); pass `inputs_q` again for self-attention.
      mask: bool broadcastable to (B, N, T, S), or None.
      deterministic: True disables attention dropout.
      rngs: `dropout` stream, needed when dropout is active.
      sow_weights: see `attend`.

    Returns:
      (B, T, D).
    """
    key, value = self.project_key_value(inputs_kv)
    return self.attend(self.project_query(inputs_q), key, value, mask,
                       deterministic=deterministic, rngs=rngs, sow_weights=sow_weights)

  def decode_self_attention(
      self, x: jax.Array, cache: dict[str, jax.Array], index: jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One causal self-attention step against a key/value cache.

    Writes this step's key and value at `index` and attends to cache positions 0..index.

    Args:
      x: (B, 1, D), the current token's input.
      cache: {"key": (B, L, N, H), "value": (B, L, N, H)}.
      index: int32 scalar, the position being decoded (same for the whole batch).

    Returns:
      (output (B, 1, D), updated cache).
    """
    key, value = self.project_key_value(x)  # (B, 1, N, H) each
    keys = jax.lax.dynamic_update_slice_in_dim(cache["key"], key.astype(cache["key"].dtype),
                                               index, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(
        cache["value"], value.astype(cache["value"].dtype), index, axis=1)
    mask = (jnp.arange(keys.shape[1]) <= index)[None, None, None, :]  # (1, 1, 1, L)
    out = self.attend(self.project_query(x), keys, values, mask)
    return out, {"key": keys, "value": values}


def capture_attention_weights(
    module: nnx.Module,
    forward: Callable[[nnx.Module], Any],
    groups: dict[str, tuple[str, str]],
) -> dict[str, jax.Array]:
  """Runs `forward(module)` while capturing the attention weights its layers sow.

  Each `MultiHeadAttention` called with `sow_weights=True` stores its weights (see `attend`);
  this collects them per stack, one entry per layer.

  Args:
    module: the model.
    forward: calls the model with `sow_weights=True`.
    groups: output name -> (stack attribute, attention attribute), e.g.
      {"cross": ("decoder", "cross_attention")}.

  Returns:
    output name -> float32 (L, B, N, T, S); stacks without layers are left out.
  """
  _, captured = nnx.capture(forward, nnx.Intermediate)(module)
  weights = {}
  for name, (stack, attention_name) in groups.items():
    num_layers = len(getattr(module, stack).layers)
    if num_layers:
      per_layer = captured[stack]["layers"]
      weights[name] = jnp.stack([
          per_layer[i][attention_name]["attention_weights"].get_value()[0]
          for i in range(num_layers)
      ])
  return weights
