"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017) for
translation, with `encode` / `decode` / `__call__` and cached incremental decoding.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from transformer.model import attention as attention_lib
from transformer.model import blocks
from transformer.model import config as config_lib
from transformer.model import embeddings
from transformer.model import inputs as inputs_lib


class EncoderDecoder(nnx.Module):
  """Encoder-decoder Transformer (figure 1 of the paper), the default family.

  Dropout: pass `deterministic=False` and `rngs=nnx.Rngs(dropout=key)` (or a raw key) at call
  time; the model stores no random state, so `nnx.split(model)` holds parameters only.
  """

  def __init__(self, config: config_lib.TransformerConfig, *, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      config: hyperparameters; `num_encoder_layers`, `num_decoder_layers`, `source_vocab_size`
        and `vocab_size` size the stacks and embeddings.
      rngs: random streams; `params` initializes the weights (other streams are unused).
    """
    self.config = config
    source_embedding = embeddings.make_embedding(config, config.source_vocab_size, rngs)
    if config.share_embeddings:
      target_embedding = source_embedding
    else:
      target_embedding = embeddings.make_embedding(config, config.vocab_size, rngs)
    self.encoder_embedding = embeddings.make_input_embedding(config, source_embedding, rngs)
    self.decoder_embedding = embeddings.make_input_embedding(config, target_embedding, rngs)
    options = blocks.LayerOptions.from_config(config)
    self.encoder = blocks.Encoder(config.num_encoder_layers, config.d_model, config.num_heads,
                                  config.d_ff, options, rngs=rngs)
    self.decoder = blocks.Decoder(config.num_decoder_layers, config.d_model, config.num_heads,
                                  config.d_ff, options, cross_attention=True,
                                  rngs=rngs)
    self.output_projection = embeddings.OutputProjection(
        config, target_embedding, config.vocab_size, rngs=rngs)

  def encode(
      self,
      inputs: jax.Array,
      inputs_positions: jax.Array | None = None,
      inputs_segmentation: jax.Array | None = None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | jax.Array | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Runs the encoder.

    Args:
      inputs: int (B, S) source ids, `pad_id` as padding.
      inputs_positions: int (B, S) positions (restarting per packed segment); default 0..S-1.
      inputs_segmentation: int (B, S), 0 = padding; default `inputs != pad_id`.
      deterministic: True disables dropout.
      rngs: dropout randomness, `nnx.Rngs(dropout=key)` or a key; needed if not deterministic.
      sow_weights: record attention weights (used by `attention_weights`).

    Returns:
      (B, S, D) encoder output in the compute dtype.
    """
    cfg = self.config
    rngs = inputs_lib.dropout_rngs(rngs, deterministic, cfg.needs_dropout_rng)
    inputs_lib.check_tokens(inputs, cfg.max_len, "inputs")
    segmentation = inputs_lib.default_segmentation(inputs, inputs_segmentation, cfg.pad_id)
    positions = inputs_lib.default_positions(inputs, inputs_positions)
    x = self.encoder_embedding(inputs, positions, deterministic=deterministic, rngs=rngs)
    mask = attention_lib.make_segment_mask(segmentation, segmentation)  # (B, 1, S, S)
    return self.encoder(x, mask, deterministic=deterministic, rngs=rngs, sow_weights=sow_weights)

  def decode(
      self,
      encoded: jax.Array,
      inputs_segmentation: jax.Array,
      decoder_inputs: jax.Array,
      decoder_positions: jax.Array | None = None,
      decoder_segmentation: jax.Array | None = None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | jax.Array | None = None,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Runs the decoder over a whole target sequence (teacher forcing).

    Args:
      encoded: (B, S, D) from `encode`.
      inputs_segmentation: int (B, S) source segmentation (0 = padding), e.g. `inputs != pad`.
      decoder_inputs: int (B, T), `shift_right(targets, bos_id, segmentation)`.
      decoder_positions: int (B, T); default 0..T-1.
      decoder_segmentation: int (B, T), 0 = padding; default `decoder_inputs != pad_id`.
      deterministic: True disables dropout.
      rngs: dropout randomness when not deterministic.
      sow_weights: record attention weights.

    Returns:
      float32 logits (B, T, V).
    """
    cfg = self.config
    rngs = inputs_lib.dropout_rngs(rngs, deterministic, cfg.needs_dropout_rng)
    inputs_lib.check_tokens(decoder_inputs, cfg.max_len, "decoder_inputs")
    segmentation = inputs_lib.default_segmentation(decoder_inputs, decoder_segmentation,
                                                   cfg.pad_id)
    positions = inputs_lib.default_positions(decoder_inputs, decoder_positions)
    x = self.decoder_embedding(decoder_inputs, positions, deterministic=deterministic, rngs=rngs)
    # Causal over row indices plus same-segment is causal within each packed segment.
    self_mask = (attention_lib.make_segment_mask(segmentation, segmentation)
                 & attention_lib.make_causal_mask(decoder_inputs.shape[1]))  # (B, 1, T, T)
    cross_mask = attention_lib.make_segment_mask(
        segmentation, inputs_segmentation.astype(jnp.int32))  # (B, 1, T, S)
    x = self.decoder(x, self_mask, encoded, cross_mask, deterministic=deterministic, rngs=rngs,
                     sow_weights=sow_weights)
    return self.output_projection(x)

  def __call__(
      self,
      inputs: jax.Array,
      decoder_inputs: jax.Array,
      inputs_positions: jax.Array | None = None,
      decoder_positions: jax.Array | None = None,
      inputs_segmentation: jax.Array | None = None,
      decoder_segmentation: jax.Array | None = None,
      *,
      deterministic: bool = True,
      rngs: nnx.Rngs | jax.Array | None = None,
  ) -> jax.Array:
    """Teacher-forced forward pass: `encode` then `decode`.

    Args:
      inputs: int (B, S) source ids.
      decoder_inputs: int (B, T) shifted target ids (see `shift_right`).
      inputs_positions: int (B, S) or None.
      decoder_positions: int (B, T) or None.
      inputs_segmentation: int (B, S) or None (then `inputs != pad_id`).
      decoder_segmentation: int (B, T) or None (then `decoder_inputs != pad_id`).
      deterministic: True (default) disables dropout.
      rngs: `nnx.Rngs(dropout=key)` or a key, required when deterministic=False.

    Returns:
      float32 logits (B, T, V).
    """
    return self._forward(inputs, decoder_inputs, inputs_positions, decoder_positions,
                         inputs_segmentation, decoder_segmentation, deterministic=deterministic,
                         rngs=rngs, sow_weights=False)

  def _forward(self, inputs, decoder_inputs, inputs_positions, decoder_positions,
               inputs_segmentation, decoder_segmentation, *, deterministic, rngs, sow_weights):
    cfg = self.config
    rngs = inputs_lib.dropout_rngs(rngs, deterministic, cfg.needs_dropout_rng)
    inputs_segmentation = inputs_lib.default_segmentation(inputs, inputs_segmentation, cfg.pad_id)
    encoded = self.encode(inputs, inputs_positions, inputs_segmentation,
                          deterministic=deterministic, rngs=rngs, sow_weights=sow_weights)
    return self.decode(encoded, inputs_segmentation, decoder_inputs, decoder_positions,
                       decoder_segmentation, deterministic=deterministic, rngs=rngs,
                       sow_weights=sow_weights)

  def attention_weights(
      self,
      inputs: jax.Array,
      decoder_inputs: jax.Array,
      inputs_positions: jax.Array | None = None,
      decoder_positions: jax.Array | None = None,
      inputs_segmentation: jax.Array | None = None,
      decoder_segmentation: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """Every layer's and head's attention weights for one deterministic forward pass.

    A separate call: the default `__call__` never materializes the weights.

    Args:
      inputs, decoder_inputs, inputs_positions, decoder_positions, inputs_segmentation,
        decoder_segmentation: as for `__call__`.

    Returns:
      float32 arrays: "encoder_self" (L_enc, B, N, S, S), "decoder_self" (L_dec, B, N, T, T),
      "cross" (L_dec, B, N, T, S); rows sum to 1 over the last axis.
    """
    def forward(model):
      return model._forward(inputs, decoder_inputs, inputs_positions, decoder_positions,
                            inputs_segmentation, decoder_segmentation, deterministic=True,
                            rngs=None, sow_weights=True)

    return attention_lib.capture_attention_weights(self, forward, {
        "encoder_self": ("encoder", "self_attention"),
        "decoder_self": ("decoder", "self_attention"),
        "cross": ("decoder", "cross_attention"),
    })

  def init_cache(
      self,
      inputs: jax.Array,
      max_decode_len: int,
      inputs_positions: jax.Array | None = None,
      inputs_segmentation: jax.Array | None = None,
  ) -> dict:
    """Runs the encoder once and builds the decoding cache.

    Args:
      inputs: int (B, S) source ids (unpacked).
      max_decode_len: L, the number of decoder positions the cache holds (<= `max_len`).
      inputs_positions: int (B, S) or None.
      inputs_segmentation: int (B, S) or None (then `inputs != pad_id`).

    Returns:
      A pytree: {"index": int32 scalar, "encoder_segmentation": int32 (B, S), "layers": per
      layer {"self": {"key", "value"}: (B, L, N, H), "cross": {"key", "value"}: (B, S, N, H)}}.
      Every leaf except "index" has the batch as its leading axis.
    """
    cfg = self.config
    if not 0 < max_decode_len <= cfg.max_len:
      raise ValueError(f"max_decode_len={max_decode_len} must be in [1, max_len={cfg.max_len}]")
    segmentation = inputs_lib.default_segmentation(inputs, inputs_segmentation, cfg.pad_id)
    encoded = self.encode(inputs, inputs_positions, segmentation)
    return {
        "index": jnp.zeros((), jnp.int32),
        "encoder_segmentation": segmentation,
        "layers": self.decoder.init_cache(inputs.shape[0], max_decode_len, encoded,
                                          jnp.dtype(cfg.dtype)),
    }

  def decode_step(self, tokens: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """Decodes one position for every sequence, attending to cached keys and values.

    Args:
      tokens: int (B,), the decoder input at position `cache["index"]` (BOS first).
      cache: from `init_cache` or a previous `decode_step`.

    Returns:
      (float32 logits (B, V) for the next token, cache advanced by one position).
    """
    index = cache["index"]
    positions = jnp.full((tokens.shape[0], 1), index, jnp.int32)
    x = self.decoder_embedding(tokens[:, None], positions)  # (B, 1, D)
    cross_mask = (cache["encoder_segmentation"] > 0)[:, None, None, :]  # (B, 1, 1, S)
    x, layer_caches = self.decoder.decode_step(x, cache["layers"], index, cross_mask)
    logits = self.output_projection(x)[:, 0]  # (B, V)
    return logits, dict(cache, index=index + 1, layers=layer_caches)
