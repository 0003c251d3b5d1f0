"""Building blocks of "Attention Is All You Need" (Vaswani et al., 2017): embeddings (section 3.4),
positional encodings (3.5), the position-wise feed-forward network (3.3) and layer norm.

Every parameter carries logical axis names (`out_sharding` metadata) for `transformer.sharding`.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Initializer = jax.nn.initializers.Initializer

# Kinds of `PositionalEncoding`, the values `TransformerConfig.position_encoding` accepts.
POSITION_ENCODINGS = ("sinusoidal", "learned")


def make_param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    axes: Sequence[str | None],
    param_dtype: jnp.dtype,
) -> nnx.Param:
  """Creates a parameter tagged with logical axis names.

  `eager_sharding=False` keeps construction mesh-free: the names are metadata only, read by
  `nnx.get_partition_spec` when the training program builds shardings.

  Args:
    rngs: random streams; the `params` stream initializes the value.
    init: initializer `(key, shape, dtype) -> array`.
    shape: the parameter shape.
    axes: one logical axis name (or None) per dimension.
    param_dtype: storage dtype.

  Returns:
    An `nnx.Param` with `out_sharding=tuple(axes)` metadata.
  """
  if len(shape) != len(axes):
    raise ValueError(f"shape {tuple(shape)} and axes {tuple(axes)} differ in length")
  value = init(rngs.params(), tuple(shape), param_dtype)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


@jax.custom_vjp
def tied_logits(x: jax.Array, table: jax.Array) -> jax.Array:
  """Logits x @ table^T with float32 accumulation, for an output layer tied to an embedding.

  The custom backward pass computes the table gradient as (x^T g)^T, contracting the token axis
  of x (D wide) and of the logit gradient g (V wide) where both are the major axis. Autodiff
  computes g^T x instead, for which XLA on CPU writes g a second time in transposed layout: one
  more (B, T, V) float32 buffer at the memory peak of a training step (bench/RESULTS.md). In
  float32 the values are the same products and sums as autodiff's.

  Args:
    x: (B, T, D) hidden states in the compute dtype.
    table: (V, D) embedding table in the compute dtype.

  Returns:
    float32 (B, T, V).
  """
  return jnp.einsum("btd,vd->btv", x, table, preferred_element_type=jnp.float32)


def _tied_logits_fwd(x, table):
  return tied_logits(x, table), (x, table)


def _tied_logits_bwd(residuals, g):
  x, table = residuals
  b, t, d = x.shape
  # The float32 logit gradient enters both matmuls in the compute dtype (a no-op in float32),
  # like every other activation gradient of the model; a float32 operand would turn these two
  # largest matmuls of a bf16 step into float32 ones. Accumulation stays float32.
  g = g.astype(x.dtype)
  dx = jnp.einsum("btv,vd->btd", g, table, preferred_element_type=jnp.float32)
  dtable_t = jax.lax.dot_general(
      x.reshape(b * t, d), g.reshape(b * t, -1), (((0,), (0,)), ((), ())),
      preferred_element_type=jnp.float32)  # (D, V)
  return dx.astype(x.dtype), dtable_t.T.astype(table.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


class Embedding(nnx.Module):
  """Token embedding scaled by sqrt(D) (section 3.4), reusable as the tied output projection."""

  def __init__(
      self,
      vocab_size: int,
      embed_dim: int,
      *,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds a (V, D) table.

    Args:
      vocab_size: V.
      embed_dim: D.
      dtype: compute dtype of the returned embeddings.
      param_dtype: storage dtype.
      rngs: random streams for initialization.
    """
    self.embed_dim = embed_dim
    self.dtype = dtype
    # stddev D^-1/2 so that the sqrt(D)-scaled embeddings start with unit variance.
    init = jax.nn.initializers.normal(stddev=embed_dim**-0.5)
    self.table = make_param(rngs, init, (vocab_size, embed_dim), ("vocab", "embed"), param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Looks up `ids` (B, T) int and returns embeddings * sqrt(D), shape (B, T, D), `dtype`."""
    table = self.table[...]
    x = jnp.take(table, ids, axis=0)
    return (x * jnp.sqrt(jnp.asarray(self.embed_dim, table.dtype))).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """Tied output projection: (B, T, D) -> float32 logits (B, T, V) = x @ table^T."""
    return tied_logits(x.astype(self.dtype), self.table[...].astype(self.dtype))


def _hash32(x: jax.Array) -> jax.Array:
  """lowbias32 integer hash (C. Wellons): a bijection on uint32 with strong avalanche."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def random_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Uniform uint32 bits of `shape` from a counter-based hash of (key, element index).

  For dropout masks only: two integer hashes per element are several times less integer work
  than threefry's 20 rounds, which matters on CPU (bench/RESULTS.md); the bits are still a pure
  function of the key, so replayed keys give the same masks.

  Args:
    key: a typed PRNG key or raw uint32 key data (e.g. from `nnx.Rngs(...).dropout()`).
    shape: output shape.

  Returns:
    uint32 array of `shape`.
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = jnp.ravel(key).astype(jnp.uint32)
  seed = jnp.uint32(0x9E3779B9)
  for i in range(words.shape[0]):
    seed = _hash32(seed ^ words[i])
  salt = _hash32(seed ^ jnp.uint32(0x85EBCA6B))
  # Row-major element index, built from per-axis iotas so it partitions like the input.
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, tuple(shape), axis) * jnp.uint32(
        stride % 2**32)
    stride *= shape[axis]
  return _hash32(_hash32(index ^ seed) + salt)


class Dropout(nnx.Module):
  """Inverted dropout (section 5.4) with hash-based masks; keeps no random state.

  Same contract as `nnx.Dropout` as the model uses it: zero each element with probability
  `rate`, scale the others by 1 / (1 - rate), one fresh key drawn from `rngs.dropout()` per call.
  """

  def __init__(self, rate: float):
    """`rate` in [0, 1): probability of zeroing an element."""
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    self.rate = rate

  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Returns x (any shape) unchanged if deterministic, else with dropout applied."""
    if deterministic or self.rate == 0.0:
      return x
    if rngs is None:
      raise ValueError("dropout with deterministic=False needs rngs with a 'dropout' stream")
    threshold = min(round(self.rate * 2**32), 2**32 - 1)
    keep = random_bits(rngs.dropout(), x.shape) >= jnp.uint32(threshold)
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


@functools.cache
def sinusoidal_table(max_len: int, embed_dim: int) -> np.ndarray:
  """The paper's encoding, computed once per (max_len, D) in float64 and stored as float32.

  PE(pos, 2i) = sin(pos / 10000^(2i/D)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/D)).

  Args:
    max_len: number of positions L.
    embed_dim: D (even).

  Returns:
    A read-only float32 numpy array of shape (L, D).
  """
  positions = np.arange(max_len, dtype=np.float64)[:, None]  # (L, 1)
  two_i = np.arange(0, embed_dim, 2, dtype=np.float64)[None, :]  # (1, D/2)
  angles = positions / np.power(10000.0, two_i / embed_dim)  # (L, D/2)
  table = np.empty((max_len, embed_dim), dtype=np.float64)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles)
  table = table.astype(np.float32)
  table.setflags(write=False)
  return table


class PositionalEncoding(nnx.Module):
  """Sinusoidal (fixed, section 3.5) or learned (table of L x D parameters) position vectors."""

  def __init__(
      self,
      kind: str,
      max_len: int,
      embed_dim: int,
      *,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the encoding.

    Args:
      kind: "sinusoidal" or "learned".
      max_len: L, positions must lie in [0, L).
      embed_dim: D.
      dtype: compute dtype of the result.
      param_dtype: storage dtype of a learned table.
      rngs: random streams (used by "learned").
    """
    if kind not in POSITION_ENCODINGS:
      raise ValueError(f"position encoding must be one of {POSITION_ENCODINGS}, got {kind!r}")
    self.kind = kind
    self.max_len = max_len
    self.embed_dim = embed_dim
    self.dtype = dtype
    if kind == "learned":
      init = jax.nn.initializers.normal(stddev=0.02)
      # The position axis is left unnamed (replicated): the table is small.
      self.table = make_param(rngs, init, (max_len, embed_dim), (None, "embed"), param_dtype)

  def __call__(self, positions: jax.Array) -> jax.Array:
    """Returns the vectors for `positions` (B, T) int, shape (B, T, D), `dtype`."""
    if self.kind == "sinusoidal":
      table = jnp.asarray(sinusoidal_table(self.max_len, self.embed_dim))
    else:
      table = self.table[...]
    return jnp.take(table, positions, axis=0).astype(self.dtype)


class LayerNorm(nnx.Module):
  """Layer normalization over the last axis, computed in float32 (Ba et al., 2016)."""

  def __init__(
      self,
      dim: int,
      *,
      epsilon: float = 1e-6,
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds scale and bias of shape (D,).

    Args:
      dim: D.
      epsilon: added to the variance.
      dtype: dtype of the result.
      param_dtype: storage dtype.
      rngs: random streams.
    """
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = make_param(rngs, jax.nn.initializers.ones, (dim,), ("embed",), param_dtype)
    self.bias = make_param(rngs, jax.nn.initializers.zeros, (dim,), ("embed",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalizes x (..., D) and returns the same shape in `dtype`."""
    # float32 statistics: bf16 variance of wide activations loses too many bits.
    x = x.astype(jnp.float32)
    mean = x.mean(axis=-1, keepdims=True)
    var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


# Feed-forward activations by name, the values `TransformerConfig.activation` accepts.
# approximate=False: exact erf GELU, as in torch's default and Marian's "gelu".
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
}


class FeedForward(nnx.Module):
  """Position-wise feed-forward network FFN(x) = act(x W1 + b1) W2 + b2 (section 3.3)."""

  def __init__(
      self,
      embed_dim: int,
      hidden_dim: int,
      *,
      activation: str = "relu",
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds W1 (D, F), b1 (F,), W2 (F, D), b2 (D,).

    Args:
      embed_dim: D.
      hidden_dim: F.
      activation: "relu" (paper), "gelu" (exact) or "silu" (Marian's "swish").
      dtype: compute dtype.
      param_dtype: storage dtype.
      rngs: random streams.
    """
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    self.activation = activation
    self.dtype = dtype
    xavier = jax.nn.initializers.xavier_uniform()
    zeros = jax.nn.initializers.zeros
    self.w1 = make_param(rngs, xavier, (embed_dim, hidden_dim), ("embed", "mlp"), param_dtype)
    self.b1 = make_param(rngs, zeros, (hidden_dim,), ("mlp",), param_dtype)
    self.w2 = make_param(rngs, xavier, (hidden_dim, embed_dim), ("mlp", "embed"), param_dtype)
    self.b2 = make_param(rngs, zeros, (embed_dim,), ("embed",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x (B, T, D) to (B, T, D) in `dtype`."""
    dt = self.dtype
    h = jnp.einsum("btd,df->btf", x.astype(dt), self.w1[...].astype(dt)) + self.b1[...].astype(dt)
    h = ACTIVATIONS[self.activation](h)
    return jnp.einsum("btf,fd->btd", h, self.w2[...].astype(dt)) + self.b2[...].astype(dt)
