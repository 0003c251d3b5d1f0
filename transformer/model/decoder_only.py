"""A decoder-only (GPT-style) causal language model built from the decoder of "Attention Is All
You Need" without cross-attention (Radford et al., 2018).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from transformer.model import attention as attention_lib
from transformer.model import blocks
from transformer.model import config as config_lib
from transformer.model import embeddings
from transformer.model import inputs as inputs_lib


class DecoderOnly(nnx.Module):
  """Causal language model: embedding, `num_decoder_layers` masked self-attention layers, logits.

  Dropout is driven per call, as for `EncoderDecoder`.
  """

  def __init__(self, config: config_lib.TransformerConfig, *, rngs: nnx.Rngs):
    """Builds the model from `config` (`vocab_size`, `num_decoder_layers`, ...); `rngs.params`."""
    self.config = config
    embedding = embeddings.make_embedding(config, config.vocab_size, rngs)
    self.decoder_embedding = embeddings.make_input_embedding(config, embedding, rngs)
    self.decoder = blocks.Decoder(config.num_decoder_layers, config.d_model, config.num_heads,
                                  config.d_ff, blocks.LayerOptions.from_config(config),
                                  cross_attention=False, rngs=rngs)
    self.output_projection = embeddings.OutputProjection(config, embedding, config.vocab_size,
                                                       rngs=rngs)

  def __call__(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      segmentation: jax.Array | None = None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | jax.Array | None = None,
  ) -> jax.Array:
    """Teacher-forced forward pass.

    Args:
      tokens: int (B, T) inputs, i.e. `shift_right(targets, bos_id, segmentation)`.
      positions: int (B, T), restarting per packed segment; default 0..T-1.
      segmentation: int (B, T), 0 = padding; default `tokens != pad_id`.
      deterministic: True (default) disables dropout.
      rngs: `nnx.Rngs(dropout=key)` or a key, required when deterministic=False.

    Returns:
      float32 logits (B, T, V); position t predicts token t + 1 of the input.
    """
    return self._forward(tokens, positions, segmentation, deterministic=deterministic,
                         rngs=rngs, sow_weights=False)

  def _forward(self, tokens, positions, segmentation, *, deterministic, rngs, sow_weights):
    cfg = self.config
    rngs = inputs_lib.dropout_rngs(rngs, deterministic, cfg.needs_dropout_rng)
    inputs_lib.check_tokens(tokens, cfg.max_len, "tokens")
    segmentation = inputs_lib.default_segmentation(tokens, segmentation, cfg.pad_id)
    positions = inputs_lib.default_positions(tokens, positions)
    x = self.decoder_embedding(tokens, positions, deterministic=deterministic, rngs=rngs)
    mask = (attention_lib.make_segment_mask(segmentation, segmentation)
            & attention_lib.make_causal_mask(tokens.shape[1]))  # (B, 1, T, T)
    x = self.decoder(x, mask, deterministic=deterministic, rngs=rngs, sow_weights=sow_weights)
    return self.output_projection(x)

  def attention_weights(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      segmentation: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """All attention weights of a deterministic pass: {"decoder_self": (L, B, N, T, T)} float32."""
    def forward(model):
      return model._forward(tokens, positions, segmentation, deterministic=True, rngs=None,
                            sow_weights=True)

    return attention_lib.capture_attention_weights(
        self, forward, {"decoder_self": ("decoder", "self_attention")})

  def init_cache(self, batch_size: int, max_decode_len: int) -> dict:
    """An empty decoding cache.

    Args:
      batch_size: B.
      max_decode_len: L, positions the cache holds (<= `max_len`).

    Returns:
      {"index": int32 scalar, "layers": per layer {"self": {"key", "value"}: (B, L, N, H)}}.
    """
    cfg = self.config
    if not 0 < max_decode_len <= cfg.max_len:
      raise ValueError(f"max_decode_len={max_decode_len} must be in [1, max_len={cfg.max_len}]")
    return {
        "index": jnp.zeros((), jnp.int32),
        "layers": self.decoder.init_cache(batch_size, max_decode_len, None, jnp.dtype(cfg.dtype)),
    }

  def decode_step(self, tokens: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """Feeds tokens (B,) at position `cache["index"]`; returns (float32 logits (B, V), cache)."""
    index = cache["index"]
    positions = jnp.full((tokens.shape[0], 1), index, jnp.int32)
    x = self.decoder_embedding(tokens[:, None], positions)  # (B, 1, D)
    x, layer_caches = self.decoder.decode_step(x, cache["layers"], index, None)
    return self.output_projection(x)[:, 0], dict(cache, index=index + 1, layers=layer_caches)
