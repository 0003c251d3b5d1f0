"""Every model family jits, and runs with bfloat16 compute over float32 parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import model as model_lib

TOKENS = jnp.array([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0]])


def _call(model, family):
  if family == "encoder_decoder":
    return model(TOKENS, TOKENS[:, :4])
  return model(TOKENS)


@pytest.mark.parametrize("family, cls", [
    ("encoder_decoder", model_lib.EncoderDecoder),
    ("decoder_only", model_lib.DecoderOnly),
    ("encoder_only", model_lib.EncoderOnly),
])
def test_bf16_compute_with_f32_params_under_jit(family, cls):
  cfg = model_lib.TransformerConfig.tiny(num_encoder_layers=1, num_decoder_layers=1)
  f32 = cls(cfg, rngs=nnx.Rngs(0))
  bf16 = cls(model_lib.TransformerConfig.tiny(num_encoder_layers=1, num_decoder_layers=1,
                                              dtype="bfloat16"), rngs=nnx.Rngs(0))
  params = nnx.state(bf16, nnx.Param)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  run = nnx.jit(lambda m: _call(m, family))
  low, high = run(bf16), run(f32)
  assert low.dtype == jnp.float32
  assert np.isfinite(np.asarray(low)).all()
  # Same weights, so bf16 logits track the float32 ones up to bf16 rounding.
  scale = float(jnp.abs(high).max())
  assert float(jnp.abs(low - high).max()) < 0.05 * scale
