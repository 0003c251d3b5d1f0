"""An encoder-only (BERT-style) model: the encoder of "Attention Is All You Need" with a
masked-language-model head (Devlin et al., 2019).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from transformer.model import attention as attention_lib
from transformer.model import blocks
from transformer.model import config as config_lib
from transformer.model import embeddings
from transformer.model import inputs as inputs_lib
from transformer.model import layers


class MaskedLMHead(nnx.Module):
  """BERT's prediction head: dense D->D, activation, LayerNorm, tied logits plus a bias (V,)."""

  def __init__(self, config: config_lib.TransformerConfig, embedding: layers.Embedding, *,
               rngs: nnx.Rngs):
    """Builds the transform (D, D), norm and output bias; logits reuse `embedding`."""
    dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    self.dtype = dtype
    self.activation = config.activation
    d = config.d_model
    self.kernel = layers.make_param(rngs, jax.nn.initializers.xavier_uniform(), (d, d),
                                    ("embed", "mlp"), param_dtype)
    self.bias = layers.make_param(rngs, jax.nn.initializers.zeros, (d,), ("mlp",), param_dtype)
    self.norm = layers.LayerNorm(d, epsilon=config.layer_norm_epsilon, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
    self.output = embeddings.OutputProjection(config, embedding, config.vocab_size, rngs=rngs)
    self.output_bias = layers.make_param(rngs, jax.nn.initializers.zeros, (config.vocab_size,),
                                         ("vocab",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps hidden states (B, S, D) to float32 logits (B, S, V)."""
    dt = self.dtype
    h = jnp.einsum("bsd,de->bse", x.astype(dt), self.kernel[...].astype(dt))
    h = h + self.bias[...].astype(dt)
    # BERT's GELU for every model activation but ReLU (a "silu" model gets GELU here too).
    h = layers.ACTIVATIONS["relu" if self.activation == "relu" else "gelu"](h)
    return self.output(self.norm(h)) + self.output_bias[...].astype(jnp.float32)


class EncoderOnly(nnx.Module):
  """Bidirectional encoder with a masked-LM head. Dropout is driven per call."""

  def __init__(self, config: config_lib.TransformerConfig, *, rngs: nnx.Rngs):
    """Builds the model from `config` (`vocab_size`, `num_encoder_layers`, ...); `rngs.params`."""
    self.config = config
    embedding = embeddings.make_embedding(config, config.vocab_size, rngs)
    self.encoder_embedding = embeddings.make_input_embedding(config, embedding, rngs)
    self.encoder = blocks.Encoder(config.num_encoder_layers, config.d_model, config.num_heads,
                                  config.d_ff, blocks.LayerOptions.from_config(config), rngs=rngs)
    self.mlm_head = MaskedLMHead(config, embedding, rngs=rngs)

  def encode(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      segmentation: jax.Array | None = None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | jax.Array | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Contextual representations (B, S, D) of tokens (B, S); arguments as for `__call__`."""
    cfg = self.config
    rngs = inputs_lib.dropout_rngs(rngs, deterministic, cfg.needs_dropout_rng)
    inputs_lib.check_tokens(tokens, cfg.max_len, "tokens")
    segmentation = inputs_lib.default_segmentation(tokens, segmentation, cfg.pad_id)
    positions = inputs_lib.default_positions(tokens, positions)
    x = self.encoder_embedding(tokens, positions, deterministic=deterministic, rngs=rngs)
    mask = attention_lib.make_segment_mask(segmentation, segmentation)  # (B, 1, S, S)
    return self.encoder(x, mask, deterministic=deterministic, rngs=rngs, sow_weights=sow_weights)

  def __call__(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      segmentation: jax.Array | None = None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | jax.Array | None = None,
  ) -> jax.Array:
    """Masked-LM logits.

    Args:
      tokens: int (B, S) corrupted ids (some replaced by the mask id).
      positions: int (B, S) or None (0..S-1).
      segmentation: int (B, S), 0 = padding, or None (`tokens != pad_id`).
      deterministic: True (default) disables dropout.
      rngs: `nnx.Rngs(dropout=key)` or a key, required when deterministic=False.

    Returns:
      float32 logits (B, S, V); the loss scores only the masked (corrupted) positions.
    """
    return self.mlm_head(self.encode(tokens, positions, segmentation,
                                     deterministic=deterministic, rngs=rngs))

  def attention_weights(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      segmentation: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """All attention weights of a deterministic pass: {"encoder_self": (L, B, N, S, S)}."""
    return attention_lib.capture_attention_weights(
        self, lambda model: model.encode(tokens, positions, segmentation, sow_weights=True),
        {"encoder_self": ("encoder", "self_attention")})
