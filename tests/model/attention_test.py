"""Tests of masks, scaled dot-product attention and multi-head attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer.model import attention


def _qkv(b=2, t=5, s=7, n=2, h=4, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (b, t, n, h)), jax.random.normal(kk, (b, s, n, h)),
          jax.random.normal(kv, (b, s, n, h)))


def test_causal_mask_is_lower_triangular():
  expected = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)
  np.testing.assert_array_equal(attention.make_causal_mask(3)[0, 0], expected)


def test_padding_mask():
  mask = attention.make_padding_mask(jnp.array([[True, True, False]]),
                                     jnp.array([[True, False]]))
  assert mask.shape == (1, 1, 3, 2)
  np.testing.assert_array_equal(mask[0, 0], [[1, 0], [1, 0], [0, 0]])


def test_segment_mask_keeps_segments_apart_and_drops_padding():
  seg = jnp.array([[1, 1, 2, 2, 0]])
  expected = np.array([
      [1, 1, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 0, 1, 1, 0],
      [0, 0, 1, 1, 0],
      [0, 0, 0, 0, 0],
  ], bool)
  np.testing.assert_array_equal(attention.make_segment_mask(seg, seg)[0, 0], expected)


def test_reference_attention_is_the_formula():
  q, k, v = _qkv()
  out, weights = attention.reference_attention(q, k, v)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(4.0)
  expected_w = np.exp(logits - logits.max(-1, keepdims=True))
  expected_w /= expected_w.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights, expected_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, np.einsum("bnts,bsnh->btnh", expected_w, v), rtol=1e-5,
                             atol=1e-5)


def test_xla_attention_equals_reference_with_masks():
  q, k, v = _qkv()
  mask = jax.random.bernoulli(jax.random.key(3), 0.6, (2, 1, 5, 7))
  mask = mask.at[:, :, :, 0].set(True)  # no fully masked rows here
  expected, _ = attention.reference_attention(q, k, v, mask)
  got = attention.dot_product_attention(q, k, v, mask, implementation="xla")
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Masked keys have no influence: changing their values changes nothing.
  v2 = v.at[:, 1:].set(100.0)
  only_first = jnp.zeros((2, 1, 5, 7), bool).at[..., 0].set(True)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v2, only_first),
                             jnp.broadcast_to(v[:, :1], (2, 5, 2, 4)), rtol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_fully_masked_row_is_finite(impl):
  q, k, v = _qkv()
  mask = jnp.zeros((2, 1, 5, 7), bool)
  out = attention.dot_product_attention(q, k, v, mask, implementation=impl)
  assert np.isfinite(np.asarray(out)).all()


def test_cudnn_off_gpu_is_a_clear_error():
  q, k, v = _qkv()
  if jax.default_backend() == "gpu":
    pytest.skip("runs on a GPU backend")
  with pytest.raises(ValueError, match="needs a GPU"):
    attention.dot_product_attention(q, k, v, implementation="cudnn")
  with pytest.raises(ValueError, match="implementation"):
    attention.dot_product_attention(q, k, v, implementation="flash")


def test_multi_head_attention_matches_manual_heads():
  mha = attention.MultiHeadAttention(2, 8, implementation="xla", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 3, 8))
  y = jax.random.normal(jax.random.key(2), (2, 4, 8))
  mask = jnp.ones((2, 1, 3, 4), bool).at[1, :, :, 3].set(False)
  out = mha(x, y, mask)
  assert out.shape == (2, 3, 8)
  wq = np.asarray(mha.query_kernel[...]).reshape(8, 8)
  wk = np.asarray(mha.key_kernel[...]).reshape(8, 8)
  wv = np.asarray(mha.value_kernel[...]).reshape(8, 8)
  wo = np.asarray(mha.out_kernel[...]).reshape(8, 8)
  x, y = np.asarray(x), np.asarray(y)
  expected = np.zeros((2, 3, 8))
  for b in range(2):
    heads = []
    for n in range(2):
      cols = slice(4 * n, 4 * n + 4)
      q, k, v = x[b] @ wq[:, cols], y[b] @ wk[:, cols], y[b] @ wv[:, cols]
      logits = q @ k.T / 2.0
      logits = np.where(np.asarray(mask[b, 0]), logits, -1e30)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      heads.append((w / w.sum(-1, keepdims=True)) @ v)
    expected[b] = np.concatenate(heads, -1) @ wo
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  assert mha.query_kernel.get_metadata()["out_sharding"] == ("embed", "heads", "kv")
  assert mha.out_kernel.get_metadata()["out_sharding"] == ("heads", "kv", "embed")


def test_multi_head_attention_rejects_bad_head_count():
  with pytest.raises(ValueError, match="divisible"):
    attention.MultiHeadAttention(3, 8, rngs=nnx.Rngs(0))
