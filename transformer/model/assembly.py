"""Turns a `TransformerConfig` into building blocks shared by the three model families: layer
options, input embeddings, the output projection (tied per section 3.4, or separate) and the
collection of recorded attention weights.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from transformer.model import blocks
from transformer.model import config as config_lib
from transformer.model import layers


def layer_options(config: config_lib.TransformerConfig) -> blocks.LayerOptions:
  """The `blocks.LayerOptions` that `config` describes."""
  return blocks.LayerOptions(
      norm_placement=config.norm_placement,
      activation=config.activation,
      dropout_rate=config.dropout_rate,
      attention_dropout_rate=config.attention_dropout_rate,
      attention_impl=config.attention_impl,
      epsilon=config.layer_norm_epsilon,
      dtype=jnp.dtype(config.dtype),
      param_dtype=jnp.dtype(config.param_dtype),
  )


def make_embedding(config: config_lib.TransformerConfig, vocab_size: int,
                   rngs: nnx.Rngs) -> layers.Embedding:
  """A (V, D) `Embedding` in the config's dtypes."""
  return layers.Embedding(vocab_size, config.d_model, dtype=jnp.dtype(config.dtype),
                          param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)


def make_input_embedding(config: config_lib.TransformerConfig, embedding: layers.Embedding,
                         rngs: nnx.Rngs) -> blocks.InputEmbedding:
  """Token embedding + positional encoding + dropout for one stack."""
  positional = layers.PositionalEncoding(
      config.position_encoding, config.max_len, config.d_model, dtype=jnp.dtype(config.dtype),
      param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)
  return blocks.InputEmbedding(embedding, positional, dropout_rate=config.dropout_rate)


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


def capture_attention_weights(
    module: nnx.Module,
    forward: Callable[[nnx.Module], Any],
    groups: dict[str, tuple[str, str]],
) -> dict[str, jax.Array]:
  """Runs `forward(module)` while capturing the attention weights its layers sow.

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


def needs_dropout_rng(config: config_lib.TransformerConfig) -> bool:
  """Whether any dropout in the model is active when deterministic=False."""
  return config.dropout_rate > 0.0 or config.attention_dropout_rate > 0.0
