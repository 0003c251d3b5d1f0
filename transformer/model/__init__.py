"""The models of "Attention Is All You Need" (Vaswani et al., 2017) in Flax NNX.

Families: `EncoderDecoder` (translation), `DecoderOnly` (causal LM), `EncoderOnly` (masked LM),
all configured by one frozen `TransformerConfig`.

Calling a model:
  model = EncoderDecoder(TransformerConfig.base(vocab_size=37000), rngs=nnx.Rngs(params=0))
  logits = model(inputs, shift_right(targets, cfg.bos_id, targets_segmentation), ...)  # (B,T,V)

Dropout keys are supplied per call, never stored: the models keep no random state, so
`graphdef, params = nnx.split(model)` holds parameters only, and a pure jitted step does
  model = nnx.merge(graphdef, params)
  logits = model(..., deterministic=False, rngs=nnx.Rngs(dropout=jax.random.fold_in(rng, step)))
`rngs` may also be the raw key. `deterministic=True` (the default) ignores `rngs`.

Cached decoding: `EncoderDecoder.init_cache(inputs, max_decode_len)` runs the encoder once;
`DecoderOnly.init_cache(batch_size, max_decode_len)`; then `decode_step(tokens (B,), cache) ->
(logits (B, V), cache)` for both. `transformer.decoding` drives these.

Attention maps: `model.attention_weights(<same inputs as __call__>)` returns a dict of float32
(L, B, N, T, S) arrays; the default call never materializes the weights.

Logical axis names (`nnx.Param` metadata `out_sharding`, created with `eager_sharding=False`, so
`nnx.get_partition_spec(nnx.state(model))` gives PartitionSpecs of these names):
  "vocab"  vocabulary axis of embedding tables, untied output kernels and the MLM output bias
  "embed"  model width D (embeddings, projections' D side, norms, biases of width D)
  "heads"  attention heads N of Q/K/V/output kernels and Q/K/V biases
  "kv"     per-head width H of the same kernels and biases
  "mlp"    feed-forward width F (and the MLM head's D x D transform output)
  None     the position axis of learned position tables (replicated)
Parameter shapes: embedding table (V, D) ("vocab", "embed"); Q/K/V kernels (D, N, H) ("embed",
"heads", "kv"), biases (N, H); output kernel (N, H, D) ("heads", "kv", "embed"); FFN w1 (D, F)
("embed", "mlp"), w2 (F, D) ("mlp", "embed"); LayerNorm scale/bias (D,) ("embed",); untied
output kernel (D, V) ("embed", "vocab").
"""

from transformer.model.attention import dot_product_attention
from transformer.model.attention import make_causal_mask
from transformer.model.attention import make_padding_mask
from transformer.model.attention import make_segment_mask
from transformer.model.attention import reference_attention
from transformer.model.config import TransformerConfig
from transformer.model.counting import closed_form_param_count
from transformer.model.counting import count_params
from transformer.model.counting import count_params_by_group
from transformer.model.decoder_only import DecoderOnly
from transformer.model.encoder_decoder import EncoderDecoder
from transformer.model.encoder_only import EncoderOnly
from transformer.model.inputs import shift_right

__all__ = [
    "TransformerConfig", "EncoderDecoder", "DecoderOnly", "EncoderOnly", "shift_right",
    "count_params", "count_params_by_group", "closed_form_param_count", "dot_product_attention",
    "reference_attention", "make_causal_mask", "make_padding_mask", "make_segment_mask",
]
