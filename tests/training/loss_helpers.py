"""Single-metric views of `losses.compute_metric_sums` for the loss tests
(imported by tests; training itself calls `compute_metric_sums`).
"""

import jax

from transformer.training import losses


def compute_weighted_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
  """Weighted cross entropy against label-smoothed targets.

  The smoothed target puts `1 - label_smoothing` on the true token and spreads
  `label_smoothing` evenly over the other V - 1 tokens. The entropy of that target distribution
  is subtracted, so a perfect prediction of the smoothed target has loss 0 (flax wmt); with
  `label_smoothing=0` this is the ordinary negative log-likelihood.

  Args:
    logits: (B, T, V) float logits; the log-softmax runs in float32.
    targets: (B, T) int token ids.
    weights: (B, T) float weights, 0 at padding.
    label_smoothing: the smoothing mass epsilon_ls in [0, 1).

  Returns:
    (loss_sum, weight_sum): float32 scalars, sum of weighted per-token losses and of weights.
  """
  sums = losses.compute_metric_sums(logits, targets, weights, label_smoothing)
  return sums["loss_sum"], sums["weight_sum"]


def compute_weighted_nll(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> jax.Array:
  """Sum of weighted negative log-likelihoods (no smoothing), for perplexity.

  Args:
    logits: (B, T, V) float logits.
    targets: (B, T) int token ids.
    weights: (B, T) float weights.

  Returns:
    float32 scalar (`compute_metric_sums`' "nll_sum", which carries no gradient).
  """
  return losses.compute_metric_sums(logits, targets, weights)["nll_sum"]


def compute_weighted_accuracy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> jax.Array:
  """Number of weighted positions whose prediction (the row maximum) is the target.

  Args:
    logits: (B, T, V) float logits.
    targets: (B, T) int token ids.
    weights: (B, T) float weights.

  Returns:
    float32 scalar: sum of weights where the prediction is right (`compute_metric_sums`'
    "accuracy_sum"; a tie for the maximum counts as right).
  """
  return losses.compute_metric_sums(logits, targets, weights)["accuracy_sum"]
