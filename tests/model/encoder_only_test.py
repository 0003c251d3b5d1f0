"""Tests of the encoder-only masked language model and its loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import model as model_lib

TOKENS = jnp.array([[5, 4, 7, 8, 3, 0, 0], [9, 10, 4, 3, 0, 0, 0]])

forward = nnx.jit(model_lib.EncoderOnly.__call__, static_argnames="deterministic")


def masked_lm_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Cross entropy summed over the masked (weighted) positions only.

  Args:
    logits: float (B, S, V).
    targets: int (B, S) original ids.
    weights: float (B, S), 1.0 at the positions chosen for prediction, else 0.

  Returns:
    (loss sum, weight sum), float32 scalars; the mean loss is their ratio.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # (B, S)
  weights = weights.astype(jnp.float32)
  # where, not a product: a masked-out position must not contribute even if its loss is inf.
  return jnp.sum(jnp.where(weights > 0, nll * weights, 0.0)), jnp.sum(weights)


@pytest.fixture(scope="module")
def mlm():
  return model_lib.EncoderOnly(model_lib.TransformerConfig.tiny(num_encoder_layers=1),
                               rngs=nnx.Rngs(0))


def test_bidirectional_and_padding_invariant(mlm):
  base = forward(mlm, TOKENS)
  assert base.shape == (2, 7, 64) and base.dtype == jnp.float32
  # Bidirectional: a later token changes earlier outputs.
  assert not np.allclose(forward(mlm, TOKENS.at[0, 3].set(20))[0, 0], base[0, 0], atol=1e-4)
  segmentation = (TOKENS != 0).astype(jnp.int32)
  noisy = jnp.where(segmentation == 0, 30, TOKENS)
  valid = np.asarray(segmentation, bool)
  np.testing.assert_allclose(np.asarray(forward(mlm, noisy, None, segmentation))[valid],
                             np.asarray(base)[valid], rtol=1e-5, atol=1e-5)


def test_masked_lm_loss_counts_masked_positions_only():
  logits = jax.random.normal(jax.random.key(0), (2, 7, 64))
  targets = jnp.array([[5, 6, 7, 8, 3, 0, 0], [9, 10, 11, 3, 0, 0, 0]])
  weights = jnp.zeros((2, 7)).at[0, 1].set(1.0).at[1, 2].set(1.0)
  loss, denom = masked_lm_loss(logits, targets, weights)
  log_probs = jax.nn.log_softmax(logits)
  expected = -(log_probs[0, 1, 6] + log_probs[1, 2, 11])
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert float(denom) == 2.0
  # Unmasked positions do not count, whatever their logits or targets.
  other = masked_lm_loss(logits.at[:, 4:].set(-1e30), targets.at[0, 0].set(1), weights)
  np.testing.assert_allclose(other[0], loss, rtol=1e-6)


def test_attention_weights_shape(mlm):
  weights = mlm.attention_weights(TOKENS)["encoder_self"]
  assert weights.shape == (1, 2, 4, 7, 7)
  assert np.all(np.asarray(weights[:, 1, :, :3, 4:]) == 0)  # padding of row 1 gets no weight
