"""Label-smoothed cross entropy (Szegedy et al., 2016), as used by Vaswani et al. (2017), 5.4.

Losses return *sums* and a *denominator* so that the loop can average over many steps and
devices exactly (flax examples/wmt `compute_weighted_cross_entropy`).
"""

import jax
import jax.numpy as jnp


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
  if logits.ndim != targets.ndim + 1:
    raise ValueError(f"logits {logits.shape} must be targets {targets.shape} plus a vocab axis")
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  # Entropy of the smoothed target; 0 * log(0) is taken as 0.
  normalizing_constant = -(
      confidence * jnp.log(confidence)
      + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20)
  )
  one_hot = jax.nn.one_hot(targets, vocab_size)  # (B, T, V)
  soft_targets = one_hot * (confidence - low_confidence) + low_confidence
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, T, V)
  loss = -jnp.sum(soft_targets * log_probs, axis=-1) - normalizing_constant  # (B, T)
  weights = weights.astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights)


def compute_weighted_nll(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> jax.Array:
  """Sum of weighted negative log-likelihoods (no smoothing), for perplexity.

  Args:
    logits: (B, T, V) float logits.
    targets: (B, T) int token ids.
    weights: (B, T) float weights.

  Returns:
    float32 scalar.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, T, V)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # (B, T)
  return jnp.sum(nll * weights.astype(jnp.float32))


def compute_weighted_accuracy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> jax.Array:
  """Number of weighted positions whose argmax equals the target.

  Args:
    logits: (B, T, V) float logits.
    targets: (B, T) int token ids.
    weights: (B, T) float weights.

  Returns:
    float32 scalar: sum of weights where the prediction is right.
  """
  correct = jnp.argmax(logits, axis=-1) == targets  # (B, T)
  return jnp.sum(correct * weights.astype(jnp.float32))
