"""Tests of embeddings, positional encodings, layer norm and the feed-forward network."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer.model import layers


def test_sinusoidal_table_matches_the_paper_formula():
  max_len, d = 12, 8
  table = layers.sinusoidal_table(max_len, d)
  assert table.shape == (max_len, d) and table.dtype == np.float32
  for pos in range(max_len):
    for i in range(d // 2):
      angle = pos / 10000 ** (2 * i / d)
      assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
      assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_table_is_computed_once():
  assert layers.sinusoidal_table(16, 4) is layers.sinusoidal_table(16, 4)


def test_positional_encoding_indexes_by_position():
  enc = layers.PositionalEncoding("sinusoidal", 16, 8, rngs=nnx.Rngs(0))
  positions = jnp.array([[0, 1, 2, 0, 1], [3, 2, 1, 0, 15]])
  out = enc(positions)
  np.testing.assert_array_equal(out, layers.sinusoidal_table(16, 8)[np.asarray(positions)])
  learned = layers.PositionalEncoding("learned", 16, 8, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(learned(positions), learned.table[...][np.asarray(positions)])
  with pytest.raises(ValueError, match="position encoding"):
    layers.PositionalEncoding("rotary", 16, 8, rngs=nnx.Rngs(0))


def test_embedding_is_scaled_by_sqrt_d_and_attend_is_transposed_table():
  emb = layers.Embedding(10, 16, rngs=nnx.Rngs(0))
  ids = jnp.array([[1, 2, 3]])
  table = np.asarray(emb.table[...])
  np.testing.assert_allclose(emb(ids), table[[1, 2, 3]][None] * 4.0, rtol=1e-6)
  x = jax.random.normal(jax.random.key(1), (1, 3, 16))
  np.testing.assert_allclose(emb.attend(x), np.asarray(x) @ table.T, rtol=1e-5, atol=1e-5)
  assert emb.table.get_metadata()["out_sharding"] == ("vocab", "embed")


def test_layer_norm_matches_numpy():
  norm = layers.LayerNorm(6, epsilon=1e-6, rngs=nnx.Rngs(0))
  norm.scale[...] = jnp.arange(1.0, 7.0)
  norm.bias[...] = jnp.full((6,), 0.5)
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, 6)))
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(norm(jnp.asarray(x)), expected * np.arange(1.0, 7.0) + 0.5,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_feed_forward_is_two_linear_maps_around_the_activation(activation):
  ffn = layers.FeedForward(4, 8, activation=activation, rngs=nnx.Rngs(0))
  ffn.b1[...] = jnp.linspace(-1, 1, 8)
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  act = {"relu": jax.nn.relu, "gelu": lambda h: jax.nn.gelu(h, approximate=False),
         "silu": lambda h: h / (1.0 + jnp.exp(-h))}[activation]
  expected = act(x @ ffn.w1[...] + ffn.b1[...]) @ ffn.w2[...] + ffn.b2[...]
  np.testing.assert_allclose(ffn(x), expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="activation"):
    layers.FeedForward(4, 8, activation="swish", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_tied_logits_gradient_equals_autodiff(dtype, tol):
  kx, kt, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 3, 8)).astype(dtype)
  table = jax.random.normal(kt, (11, 8)).astype(dtype)
  cotangent = jax.random.normal(kg, (2, 3, 11))
  autodiff = lambda x, t: jnp.einsum("btd,vd->btv", x, t, preferred_element_type=jnp.float32)
  ours, vjp = jax.vjp(layers.tied_logits, x, table)
  want, want_vjp = jax.vjp(autodiff, x, table)
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-6)
  for got, expected in zip(vjp(cotangent), want_vjp(cotangent)):
    assert got.dtype == expected.dtype == dtype
    scale = float(jnp.abs(expected.astype(jnp.float32)).max())
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                               atol=tol * scale)
