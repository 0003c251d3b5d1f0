"""Embeddings of "Attention Is All You Need" (section 3.4) as the model families build them from
a `TransformerConfig`: token tables (one may serve source, target and output), each stack's input
embedding (token * sqrt(D) + position, then dropout) and the output projection to logits.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from transformer.model import config as config_lib
from transformer.model import layers


class InputEmbedding(nnx.Module):
  """Token embedding * sqrt(D) + positional encoding, then dropout (section 3.4, 3.5, 5.4)."""

  def __init__(
      self,
      embedding: layers.Embedding,
      positional: layers.PositionalEncoding,
      *,
      dropout_rate: float,
  ):
    """Wraps an `Embedding` (possibly shared with other stacks) and a `PositionalEncoding`."""
    self.embedding = embedding
    self.positional = positional
    self.dropout = layers.Dropout(dropout_rate)

  def __call__(
      self,
      ids: jax.Array,
      positions: jax.Array,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """Maps ids (B, T) and positions (B, T) to (B, T, D)."""
    x = self.embedding(ids) + self.positional(positions)
    return self.dropout(x, deterministic=deterministic, rngs=rngs)


def make_embedding(config: config_lib.TransformerConfig, vocab_size: int,
                   rngs: nnx.Rngs) -> layers.Embedding:
  """A (V, D) `Embedding` in the config's dtypes."""
  return layers.Embedding(vocab_size, config.d_model, dtype=jnp.dtype(config.dtype),
                          param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)


def make_input_embedding(config: config_lib.TransformerConfig, embedding: layers.Embedding,
                         rngs: nnx.Rngs) -> InputEmbedding:
  """Token embedding + positional encoding + dropout for one stack."""
  positional = layers.PositionalEncoding(
      config.position_encoding, config.max_len, config.d_model, dtype=jnp.dtype(config.dtype),
      param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)
  return InputEmbedding(embedding, positional, dropout_rate=config.dropout_rate)


class OutputProjection(nnx.Module):
  """Final linear layer to vocabulary logits: tied to an embedding, or its own (D, V) kernel."""

  def __init__(self, config: config_lib.TransformerConfig, embedding: layers.Embedding,
               vocab_size: int, *, rngs: nnx.Rngs):
    """Ties to `embedding` when `config.tie_output_projection`, else creates a kernel; adds a
    (V,) `bias` only when `config.output_bias` (absent by default, so older checkpoints load)."""
    self.tied = config.tie_output_projection
    self.dtype = jnp.dtype(config.dtype)
    if self.tied:
      self.embedding = embedding
    else:
      self.kernel = layers.make_param(
          rngs, jax.nn.initializers.xavier_uniform(), (config.d_model, vocab_size),
          ("embed", "vocab"), jnp.dtype(config.param_dtype))
    self.has_bias = config.output_bias
    if self.has_bias:
      self.bias = layers.make_param(rngs, jax.nn.initializers.zeros, (vocab_size,), ("vocab",),
                                    jnp.dtype(config.param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps hidden states (B, T, D) to float32 logits (B, T, V)."""
    if self.tied:
      logits = self.embedding.attend(x)
    else:
      logits = jnp.einsum("btd,dv->btv", x.astype(self.dtype),
                          self.kernel[...].astype(self.dtype),
                          preferred_element_type=jnp.float32)
    if self.has_bias:
      logits = logits + self.bias[...].astype(jnp.float32)
    return logits
