"""Tests of TransformerConfig: presets, validation and parameter counts."""

import dataclasses

import pytest
from flax import nnx

from transformer import model as model_lib

FAMILIES = {
    "encoder_decoder": model_lib.EncoderDecoder,
    "decoder_only": model_lib.DecoderOnly,
    "encoder_only": model_lib.EncoderOnly,
}


def _abstract_count(cls, cfg):
  # eval_shape builds the model without allocating its weights.
  return model_lib.count_params(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))))


def test_presets_follow_the_paper():
  base = model_lib.TransformerConfig.base(vocab_size=37000)
  assert (base.d_model, base.num_heads, base.d_ff) == (512, 8, 2048)
  assert (base.num_encoder_layers, base.num_decoder_layers, base.dropout_rate) == (6, 6, 0.1)
  assert (base.norm_placement, base.activation, base.position_encoding) == (
      "post", "relu", "sinusoidal")
  big = model_lib.TransformerConfig.big(vocab_size=37000)
  assert (big.d_model, big.num_heads, big.d_ff, big.dropout_rate) == (1024, 16, 4096, 0.3)
  assert model_lib.TransformerConfig.big(vocab_size=8, dropout_rate=0.1).dropout_rate == 0.1
  assert base.head_dim == 64
  with pytest.raises(dataclasses.FrozenInstanceError):
    base.d_model = 4


@pytest.mark.parametrize("overrides, message", [
    (dict(num_heads=3), "divisible"),
    (dict(norm_placement="sandwich"), "norm_placement"),
    (dict(activation="tanh"), "activation"),
    (dict(position_encoding="rope"), "position_encoding"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(dropout_rate=1.5), "dropout_rate"),
    (dict(input_vocab_size=50), "share_embeddings"),
    (dict(dtype="float17"), "dtype"),
    # Norms, softmax, logits and the loss run in float32: float64 would be a name only.
    (dict(dtype="float64"), "dtype='float64' is not supported"),
    (dict(param_dtype="float64"), "param_dtype='float64' is not supported"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_bad_values_are_rejected_with_the_field_name(overrides, message):
  with pytest.raises(ValueError, match=message):
    model_lib.TransformerConfig.tiny(**overrides)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("overrides", [
    {},
    dict(norm_placement="pre", position_encoding="learned", tie_output_projection=False),
    dict(share_embeddings=False, input_vocab_size=40, activation="gelu"),
    dict(activation="silu", output_bias=True),
])
def test_tiny_parameter_count_equals_closed_form(family, overrides):
  cfg = model_lib.TransformerConfig.tiny(**overrides)
  model = FAMILIES[family](cfg, rngs=nnx.Rngs(0))
  assert model_lib.count_params(model) == model_lib.closed_form_param_count(cfg, family)


@pytest.mark.parametrize("preset", ["base", "big"])
def test_paper_presets_count_equals_closed_form(preset):
  cfg = getattr(model_lib.TransformerConfig, preset)(vocab_size=37000)
  count = _abstract_count(model_lib.EncoderDecoder, cfg)
  assert count == model_lib.closed_form_param_count(cfg, "encoder_decoder")
  if preset == "base":
    # The paper reports 65 M for base with a shared ~37k BPE vocabulary.
    assert 62_000_000 < count < 64_000_000
  else:
    assert 200_000_000 < count < 230_000_000  # paper: 213 M


def test_closed_form_base_by_hand():
  cfg = model_lib.TransformerConfig.base(vocab_size=37000)
  d, f, v = 512, 2048, 37000
  attn, ffn, ln = 4 * (d * d + d), 2 * d * f + f + d, 2 * d
  expected = v * d + 6 * (attn + ffn + 2 * ln) + 6 * (2 * attn + ffn + 3 * ln)
  assert model_lib.closed_form_param_count(cfg, "encoder_decoder") == expected == 63_082_496
  with pytest.raises(ValueError, match="family"):
    model_lib.closed_form_param_count(cfg, "mixture")
