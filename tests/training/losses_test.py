"""Label-smoothed cross entropy (Szegedy et al., 2016; Vaswani et al., 2017, 5.4) by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_helpers
from transformer.training import losses


def _log_softmax(row):
  row = np.asarray(row, np.float64)
  return row - math.log(np.exp(row).sum())


def test_label_smoothed_loss_equals_hand_computation():
  logits = jnp.array([[[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 0.5, 0.5]]])  # (B=1, T=2, V=4)
  targets = jnp.array([[0, 3]])
  weights = jnp.array([[1.0, 1.0]])
  eps = 0.1
  confidence, low = 1 - eps, eps / 3
  # Hand: -sum_v q_v log p_v minus the entropy of q, summed over positions.
  entropy = -(confidence * math.log(confidence) + 3 * low * math.log(low))
  expected = 0.0
  for t, target in enumerate([0, 3]):
    logp = _log_softmax(np.asarray(logits[0, t]))
    q = np.full(4, low)
    q[target] = confidence
    expected += -(q * logp).sum() - entropy
  loss_sum, weight_sum = loss_helpers.compute_weighted_cross_entropy(logits, targets, weights, eps)
  np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-5)
  assert float(weight_sum) == 2.0
  # Written out: entropy(q) = -(0.9 ln 0.9 + 0.1 ln(0.1/3)) = 0.43494.
  # Position 1: log p = [-0.4402, -1.4402, -2.4402, -3.4402];
  #   0.9 * 0.4402 + (0.1/3) * (1.4402 + 2.4402 + 3.4402) - 0.43494 = 0.20526.
  # Position 2 (uniform logits): ln 4 - 0.43494 = 0.95135.
  np.testing.assert_allclose(float(loss_sum), 0.20526 + 0.95135, atol=2e-4)


def test_without_smoothing_is_negative_log_likelihood_and_weights_mask_padding():
  logits = jnp.array([[[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]]])
  targets = jnp.array([[2, 1]])
  weights = jnp.array([[1.0, 0.0]])  # Second position is padding.
  loss_sum, weight_sum = loss_helpers.compute_weighted_cross_entropy(logits, targets, weights, 0.0)
  expected = -_log_softmax([1.0, 2.0, 3.0])[2]
  np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)
  np.testing.assert_allclose(float(loss_helpers.compute_weighted_nll(logits, targets, weights)),
                             expected, rtol=1e-6)
  assert float(weight_sum) == 1.0


def test_perfect_smoothed_prediction_has_zero_loss():
  eps, vocab = 0.1, 5
  q = np.full(vocab, eps / (vocab - 1))
  q[2] = 1 - eps
  logits = jnp.log(jnp.asarray(q))[None, None]
  loss_sum, _ = loss_helpers.compute_weighted_cross_entropy(logits, jnp.array([[2]]),
                                                            jnp.ones((1, 1)), eps)
  np.testing.assert_allclose(float(loss_sum), 0.0, atol=1e-6)


def test_accuracy_counts_weighted_argmax_hits():
  logits = jnp.array([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
  targets = jnp.array([[1, 1, 0]])
  weights = jnp.array([[1.0, 1.0, 0.0]])
  assert float(loss_helpers.compute_weighted_accuracy(logits, targets, weights)) == 1.0


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match="vocab axis"):
    loss_helpers.compute_weighted_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32),
                                                jnp.ones((2, 3)))


def _straightforward_loss(logits, targets, weights, eps):
  """The textbook formula: a dense smoothed target distribution against log_softmax."""
  vocab = logits.shape[-1]
  confidence, low = 1.0 - eps, eps / (vocab - 1)
  entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low  # (B, T, V)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum((-jnp.sum(soft * log_probs, axis=-1) - entropy) * weights)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_reduction_form_matches_dense_formula_in_value_and_gradient(eps):
  key_logits, key_targets, key_weights = jax.random.split(jax.random.key(0), 3)
  # Large offsets per row: the max-shift must keep V * lse - sum(z) exact enough.
  logits = 4.0 * jax.random.normal(key_logits, (3, 5, 37)) + jnp.arange(5.0)[None, :, None] * 30
  targets = jax.random.randint(key_targets, (3, 5), 0, 37)
  weights = (jax.random.uniform(key_weights, (3, 5)) < 0.7).astype(jnp.float32)
  ours = lambda z: loss_helpers.compute_weighted_cross_entropy(z, targets, weights, eps)[0]
  dense = lambda z: _straightforward_loss(z, targets, weights, eps)
  np.testing.assert_allclose(float(ours(logits)), float(dense(logits)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(logits)),
                             np.asarray(jax.grad(dense)(logits)), atol=1e-6)
  sums = losses.compute_metric_sums(logits, targets, weights, eps)
  np.testing.assert_allclose(float(sums["loss_sum"]), float(dense(logits)), rtol=1e-5)
  np.testing.assert_allclose(float(sums["nll_sum"]),
                             float(_straightforward_loss(logits, targets, weights, 0.0)),
                             rtol=1e-5)
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  assert float(sums["accuracy_sum"]) == float(accuracy)
  assert float(sums["weight_sum"]) == float(weights.sum())


def test_metric_sums_reject_bad_smoothing_and_shapes():
  logits, targets = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.compute_metric_sums(logits, targets, jnp.ones((2, 3)), 1.0)
  with pytest.raises(ValueError, match="leading axes"):
    losses.compute_metric_sums(logits, targets, jnp.ones((2, 4)), 0.1)
