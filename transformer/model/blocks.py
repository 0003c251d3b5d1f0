"""Encoder and decoder layers and stacks of "Attention Is All You Need" (section 3.1): residual
sub-layers with layer norm around one shared `MultiHeadAttention` and a `FeedForward`.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from transformer.model import attention as attention_lib
from transformer.model import config as config_lib
from transformer.model import layers

Cache = dict[str, dict[str, jax.Array]]


class ResidualSublayer(nnx.Module):
  """Residual connection with dropout and layer norm around any sub-layer.

  "post" (paper): LayerNorm(x + Dropout(f(x))).  "pre": x + Dropout(f(LayerNorm(x))).
  """

  def __init__(
      self,
      embed_dim: int,
      *,
      norm_placement: str,
      dropout_rate: float,
      epsilon: float,
      dtype: jnp.dtype,
      param_dtype: jnp.dtype,
      rngs: nnx.Rngs,
  ):
    """Builds the norm (D,) and dropout; `norm_placement` is "post" or "pre"."""
    if norm_placement not in config_lib.NORM_PLACEMENTS:
      raise ValueError(f"norm_placement must be one of {config_lib.NORM_PLACEMENTS}, "
                       f"got {norm_placement!r}")
    self.norm_placement = norm_placement
    self.norm = layers.LayerNorm(
        embed_dim, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dropout = layers.Dropout(dropout_rate)

  def __call__(
      self,
      x: jax.Array,
      sublayer: Callable[[jax.Array], jax.Array],
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """Applies `sublayer` (B, T, D) -> (B, T, D) with the residual and norm; returns (B, T, D)."""
    if self.norm_placement == "pre":
      y = sublayer(self.norm(x))
      return x + self.dropout(y, deterministic=deterministic, rngs=rngs)
    y = sublayer(x)
    return self.norm(x + self.dropout(y, deterministic=deterministic, rngs=rngs))


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """Everything an encoder or decoder layer needs besides its dimensions and `rngs`."""

  # "post" (paper) or "pre" layer norm placement; see `ResidualSublayer`.
  norm_placement: str = "post"
  # Feed-forward activation, a key of `layers.ACTIVATIONS`.
  activation: str = "relu"
  # Dropout on sub-layer outputs.
  dropout_rate: float = 0.0
  # Dropout on attention weights.
  attention_dropout_rate: float = 0.0
  # "xla", "cudnn" or "reference"; see `attention.dot_product_attention`.
  attention_impl: str = "xla"
  # LayerNorm epsilon.
  epsilon: float = 1e-6
  # Compute and storage dtypes.
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @classmethod
  def from_config(cls, config: config_lib.TransformerConfig) -> "LayerOptions":
    """The options that `config` describes."""
    return cls(
        norm_placement=config.norm_placement,
        activation=config.activation,
        dropout_rate=config.dropout_rate,
        attention_dropout_rate=config.attention_dropout_rate,
        attention_impl=config.attention_impl,
        epsilon=config.layer_norm_epsilon,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
    )


def _attention(embed_dim, num_heads, options, rngs):
  return attention_lib.MultiHeadAttention(
      num_heads, embed_dim, dropout_rate=options.attention_dropout_rate,
      implementation=options.attention_impl, dtype=options.dtype,
      param_dtype=options.param_dtype, rngs=rngs)


def _feed_forward(embed_dim, hidden_dim, options, rngs):
  return layers.FeedForward(embed_dim, hidden_dim, activation=options.activation,
                            dtype=options.dtype, param_dtype=options.param_dtype, rngs=rngs)


def _residual(embed_dim, options, rngs):
  return ResidualSublayer(embed_dim, norm_placement=options.norm_placement,
                          dropout_rate=options.dropout_rate, epsilon=options.epsilon,
                          dtype=options.dtype, param_dtype=options.param_dtype, rngs=rngs)


def _final_norm(embed_dim, options, rngs):
  # Pre-LN leaves the residual stream unnormalized, so each stack ends with one norm.
  if options.norm_placement == "pre":
    return layers.LayerNorm(embed_dim, epsilon=options.epsilon, dtype=options.dtype,
                            param_dtype=options.param_dtype, rngs=rngs)
  return None


class EncoderLayer(nnx.Module):
  """Self-attention sub-layer, then feed-forward sub-layer, each residual (section 3.1)."""

  def __init__(self, embed_dim: int, num_heads: int, hidden_dim: int, options: LayerOptions, *,
               rngs: nnx.Rngs):
    """Builds the layer.

    Args:
      embed_dim: D.
      num_heads: N.
      hidden_dim: F.
      options: norm placement, activation, dropout rates, attention kernel, dtypes.
      rngs: random streams for initialization.
    """
    self.self_attention = _attention(embed_dim, num_heads, options, rngs)
    self.self_residual = _residual(embed_dim, options, rngs)
    self.feed_forward = _feed_forward(embed_dim, hidden_dim, options, rngs)
    self.ff_residual = _residual(embed_dim, options, rngs)

  def __call__(
      self,
      x: jax.Array,
      mask: jax.Array,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Maps x (B, S, D) with a self-attention mask (B, 1, S, S) to (B, S, D)."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = self.self_residual(
        x, lambda y: self.self_attention(y, y, mask, sow_weights=sow_weights, **kw), **kw)
    return self.ff_residual(x, self.feed_forward, **kw)


class DecoderLayer(nnx.Module):
  """Masked self-attention, optional cross-attention over the encoder output, feed-forward.

  Without cross-attention this is the layer of a decoder-only (GPT-style) model.
  """

  def __init__(self, embed_dim: int, num_heads: int, hidden_dim: int, options: LayerOptions, *,
               cross_attention: bool, rngs: nnx.Rngs):
    """Builds the layer.

    Args:
      embed_dim: D.
      num_heads: N.
      hidden_dim: F.
      options: as for `EncoderLayer`.
      cross_attention: whether to attend to an encoder output.
      rngs: random streams for initialization.
    """
    self.self_attention = _attention(embed_dim, num_heads, options, rngs)
    self.self_residual = _residual(embed_dim, options, rngs)
    self.has_cross_attention = cross_attention
    if cross_attention:
      self.cross_attention = _attention(embed_dim, num_heads, options, rngs)
      self.cross_residual = _residual(embed_dim, options, rngs)
    self.feed_forward = _feed_forward(embed_dim, hidden_dim, options, rngs)
    self.ff_residual = _residual(embed_dim, options, rngs)

  def __call__(
      self,
      x: jax.Array,
      self_mask: jax.Array,
      encoded: jax.Array | None = None,
      cross_mask: jax.Array | None = None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Full-sequence (teacher-forced) pass.

    Args:
      x: (B, T, D).
      self_mask: bool (B, 1, T, T), causal and segment mask.
      encoded: (B, S, D) encoder output (cross-attention layers only).
      cross_mask: bool (B, 1, T, S).
      deterministic: True disables dropout.
      rngs: `dropout` stream when dropout is active.
      sow_weights: record attention weights (see `MultiHeadAttention.attend`).

    Returns:
      (B, T, D).
    """
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = self.self_residual(
        x, lambda y: self.self_attention(y, y, self_mask, sow_weights=sow_weights, **kw), **kw)
    if self.has_cross_attention:
      x = self.cross_residual(
          x, lambda y: self.cross_attention(y, encoded, cross_mask, sow_weights=sow_weights, **kw),
          **kw)
    return self.ff_residual(x, self.feed_forward, **kw)

  def init_cache(
      self, batch_size: int, max_len: int, encoded: jax.Array | None, dtype: jnp.dtype
  ) -> Cache:
    """Empty self-attention cache (B, L, N, H), plus cross keys/values (B, S, N, H) of `encoded`."""
    attn = self.self_attention
    shape = (batch_size, max_len, attn.num_heads, attn.head_dim)
    cache = {"self": {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}}
    if self.has_cross_attention:
      # Encoder keys/values are projected once here, not at every decoding step.
      key, value = self.cross_attention.project_key_value(encoded)
      cache["cross"] = {"key": key, "value": value}
    return cache

  def decode_step(
      self, x: jax.Array, cache: Cache, index: jax.Array, cross_mask: jax.Array | None
  ) -> tuple[jax.Array, Cache]:
    """One incremental step: x (B, 1, D) at position `index`; returns ((B, 1, D), cache)."""
    new_cache = dict(cache)

    def self_attention(y):
      out, new_cache["self"] = self.self_attention.decode_self_attention(y, cache["self"], index)
      return out

    x = self.self_residual(x, self_attention)
    if self.has_cross_attention:
      cross = cache["cross"]
      x = self.cross_residual(x, lambda y: self.cross_attention.attend(
          self.cross_attention.project_query(y), cross["key"], cross["value"], cross_mask))
    return self.ff_residual(x, self.feed_forward), new_cache


class Encoder(nnx.Module):
  """N encoder layers (plus a final norm for pre-LN)."""

  def __init__(self, num_layers: int, embed_dim: int, num_heads: int, hidden_dim: int,
               options: LayerOptions, *, rngs: nnx.Rngs):
    """Builds `num_layers` `EncoderLayer`s (arguments as for `EncoderLayer`)."""
    self.layers = nnx.List([EncoderLayer(embed_dim, num_heads, hidden_dim, options, rngs=rngs)
                            for _ in range(num_layers)])
    self.final_norm = _final_norm(embed_dim, options, rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None, sow_weights: bool = False) -> jax.Array:
    """Maps embedded inputs x (B, S, D) with mask (B, 1, S, S) to (B, S, D)."""
    for layer in self.layers:
      x = layer(x, mask, deterministic=deterministic, rngs=rngs, sow_weights=sow_weights)
    return x if self.final_norm is None else self.final_norm(x)


class Decoder(nnx.Module):
  """N decoder layers (plus a final norm for pre-LN), with or without cross-attention."""

  def __init__(self, num_layers: int, embed_dim: int, num_heads: int, hidden_dim: int,
               options: LayerOptions, *, cross_attention: bool, rngs: nnx.Rngs):
    """Builds `num_layers` `DecoderLayer`s (arguments as for `DecoderLayer`)."""
    self.layers = nnx.List([
        DecoderLayer(embed_dim, num_heads, hidden_dim, options, cross_attention=cross_attention,
                     rngs=rngs)
        for _ in range(num_layers)
    ])
    self.final_norm = _final_norm(embed_dim, options, rngs)

  def __call__(self, x: jax.Array, self_mask: jax.Array, encoded: jax.Array | None = None,
               cross_mask: jax.Array | None = None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None, sow_weights: bool = False) -> jax.Array:
    """Maps embedded x (B, T, D) to (B, T, D); masks and `encoded` as in `DecoderLayer`."""
    for layer in self.layers:
      x = layer(x, self_mask, encoded, cross_mask, deterministic=deterministic, rngs=rngs,
                sow_weights=sow_weights)
    return x if self.final_norm is None else self.final_norm(x)

  def init_cache(self, batch_size: int, max_len: int, encoded: jax.Array | None,
                 dtype: jnp.dtype) -> list[Cache]:
    """One `DecoderLayer.init_cache` per layer."""
    return [layer.init_cache(batch_size, max_len, encoded, dtype) for layer in self.layers]

  def decode_step(self, x: jax.Array, caches: list[Cache], index: jax.Array,
                  cross_mask: jax.Array | None) -> tuple[jax.Array, list[Cache]]:
    """One step for x (B, 1, D) at position `index`; returns ((B, 1, D), updated caches)."""
    new_caches = []
    for layer, cache in zip(self.layers, caches, strict=True):
      x, cache = layer.decode_step(x, cache, index, cross_mask)
      new_caches.append(cache)
    return (x if self.final_norm is None else self.final_norm(x)), new_caches
