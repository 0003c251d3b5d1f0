"""Tests of the decoder-only LM: causality, caching, packing, dropout, attention maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import model as model_lib

BOS = 2
TOKENS = model_lib.shift_right(jnp.array([[5, 6, 7, 8, 9, 3], [10, 11, 3, 0, 0, 0]]), BOS)

forward = nnx.jit(model_lib.DecoderOnly.__call__, static_argnames="deterministic")


@pytest.fixture(scope="module")
def lm():
  return model_lib.DecoderOnly(model_lib.TransformerConfig.tiny(num_decoder_layers=1),
                               rngs=nnx.Rngs(0))


def test_logits_shape_and_causality(lm):
  segmentation = (TOKENS != 0).astype(jnp.int32)
  base = forward(lm, TOKENS, None, segmentation)
  assert base.shape == (2, 6, 64) and base.dtype == jnp.float32
  valid = np.asarray(segmentation, bool)
  for j in (1, 3, 5):
    changed = forward(lm, TOKENS.at[:, j].set(40), None, segmentation)
    # Padding outputs are meaningless, so only real positions before j are compared.
    np.testing.assert_allclose(np.asarray(changed)[:, :j][valid[:, :j]],
                               np.asarray(base)[:, :j][valid[:, :j]], rtol=1e-5, atol=1e-5)
    assert not np.allclose(changed[0, j], base[0, j], atol=1e-3)


@pytest.mark.parametrize("overrides", [
    {},  # two layers
    dict(norm_placement="pre", position_encoding="learned", num_decoder_layers=1),
])
def test_cached_decoding_equals_teacher_forcing(overrides):
  lm = model_lib.DecoderOnly(model_lib.TransformerConfig.tiny(**overrides), rngs=nnx.Rngs(2))
  tokens = TOKENS[:1]  # no padding, so every position is compared
  full = forward(lm, tokens)
  cache = lm.init_cache(batch_size=1, max_decode_len=10)
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  for t in range(tokens.shape[1]):
    logits, cache = step(lm, tokens[:, t], cache)
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-4)


def test_packed_rows_equal_separate_rows(lm):
  a, b = [5, 6, 7, 3], [10, 11, 3]
  segmentation = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
  positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]])
  tokens = model_lib.shift_right(jnp.array([a + b + [0]]), BOS, segmentation)
  packed = forward(lm, tokens, positions, segmentation)
  np.testing.assert_allclose(packed[:, :4], forward(lm, model_lib.shift_right(
      jnp.array([a]), BOS)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[:, 4:7], forward(lm, model_lib.shift_right(
      jnp.array([b]), BOS)), rtol=1e-5, atol=1e-5)


def test_dropout_follows_the_call_key(lm):
  a = forward(lm, TOKENS, deterministic=False, rngs=jax.random.key(0))
  b = forward(lm, TOKENS, deterministic=False, rngs=jax.random.key(0))
  c = forward(lm, TOKENS, deterministic=False, rngs=jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_attention_weights_are_causal(lm):
  weights = lm.attention_weights(TOKENS)["decoder_self"]
  assert weights.shape == (1, 2, 4, 6, 6)
  assert np.all(np.triu(np.asarray(weights[:, 0]), k=1) == 0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
