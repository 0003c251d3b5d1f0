"""Label-smoothed cross entropy (Szegedy et al., 2016), as used by Vaswani et al. (2017), 5.4.

`compute_metric_sums` returns *sums* and a *denominator* so that the loop can average over many
steps and devices exactly (as flax examples/wmt `compute_weighted_cross_entropy` does).

Nothing here materializes a (B, T, V) target distribution or a second (B, T, V) log-softmax:
every quantity is a reduction over the vocabulary axis of the float32 logits (log-sum-exp, the
target logit, the sum of the logits, the argmax), which XLA fuses into passes over the logits.
The smoothed loss is rewritten with q = smoothed target, p = softmax(z), lse = logsumexp(z):

  -sum_v q_v log p_v = (c - l) * (lse - z_t) + l * (V * lse - sum_v z_v)

where c = 1 - eps is the mass on the target t and l = eps / (V - 1) the mass on every other
token (so sum_v q_v = c + (V - 1) l = 1). Subtracting the entropy of q gives the loss.
"""

import jax
import jax.numpy as jnp


def _check_shapes(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> None:
  if logits.ndim != targets.ndim + 1:
    raise ValueError(f"logits {logits.shape} must be targets {targets.shape} plus a vocab axis")
  if logits.shape[:-1] != targets.shape or weights.shape != targets.shape:
    raise ValueError(f"logits {logits.shape}, targets {targets.shape} and weights "
                     f"{weights.shape} must agree on the leading axes")


@jax.custom_vjp
def _token_terms(logits: jax.Array,
                 targets: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-token reductions over the vocabulary, in float32.

  A custom VJP keeps the backward pass to one elementwise pass over the logits, writing the
  logit gradient (B, T, V) directly: autodiff of the forward would also store exp(z) and the
  masked target logits, two more (B, T, V) float32 buffers (measured in bench/RESULTS.md).

  Args:
    logits: (B, T, V) float logits.
    targets: (B, T) int token ids.

  Returns:
    (nll (B, T) = lse - z_t, uniform (B, T) = -sum_v log p_v = V * lse - sum_v z_v,
    correct (B, T) float32: 1.0 where the target logit is the row's maximum). `correct` is the
    argmax hit of accuracy (a tie for the maximum counts as a hit), read off the row max the
    loss needs anyway: a separate `argmax` is one more pass over the (B, T, V) logits, a
    variadic reduce that XLA's CPU backend runs 3-4x slower than a plain max (bench/RESULTS.md).
    It carries no gradient.
  """
  return _token_terms_fwd(logits, targets)[0]


def _token_terms_fwd(logits, targets):
  z = logits.astype(jnp.float32)
  # Shift by the row max: exp cannot overflow, and V * lse - sum_v z_v loses no bits to a large
  # common offset. nll and uniform are invariant to the shift.
  row_max = jnp.max(z, axis=-1, keepdims=True)  # (B, T, 1)
  shifted_lse = jnp.log(jnp.sum(jnp.exp(z - row_max), axis=-1))  # (B, T)
  target_logit = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]  # (B, T)
  nll = shifted_lse - (target_logit - row_max[..., 0])
  uniform = z.shape[-1] * shifted_lse - jnp.sum(z - row_max, axis=-1)
  correct = (target_logit >= row_max[..., 0]).astype(jnp.float32)
  return (nll, uniform, correct), (logits, targets, row_max, shifted_lse[..., None])


def _token_terms_bwd(residuals, cotangents):
  logits, targets, row_max, shifted_lse = residuals
  g_nll, g_uniform, _ = cotangents  # (B, T) each; `correct` has no gradient.
  # d nll / dz = p - onehot(t);  d uniform / dz = V p - 1. As in the forward, subtract the row
  # max first: z - max is exact near the max, where p is large.
  probs = jnp.exp((logits.astype(jnp.float32) - row_max) - shifted_lse)  # (B, T, V)
  vocab_ids = jax.lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
  is_target = vocab_ids == targets[..., None]  # (B, T, V), fused: never stored
  g_probs = (g_nll + logits.shape[-1] * g_uniform)[..., None]
  grad = g_probs * probs - jnp.where(is_target, g_nll[..., None], 0.0) - g_uniform[..., None]
  return grad.astype(logits.dtype), None


_token_terms.defvjp(_token_terms_fwd, _token_terms_bwd)


def _smoothed_loss(nll: jax.Array, uniform: jax.Array, vocab_size: int,
                   label_smoothing: float) -> jax.Array:
  """Per-token label-smoothed loss minus the entropy of the smoothed target, (B, T)."""
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  # Entropy of the smoothed target; 0 * log(0) is taken as 0.
  normalizing_constant = -(
      confidence * jnp.log(confidence)
      + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20)
  )
  return (confidence - low_confidence) * nll + low_confidence * uniform - normalizing_constant


def compute_metric_sums(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, label_smoothing: float = 0.0
) -> dict[str, jax.Array]:
  """Loss, NLL and accuracy sums from one set of vocabulary reductions.

  The smoothed target puts `1 - label_smoothing` on the true token and spreads
  `label_smoothing` evenly over the other V - 1 tokens. The entropy of that target distribution
  is subtracted, so a perfect prediction of the smoothed target has loss 0 (flax wmt); with
  `label_smoothing=0` the loss is the ordinary negative log-likelihood.

  Args:
    logits: (B, T, V) float logits; every reduction runs in float32.
    targets: (B, T) int token ids.
    weights: (B, T) float weights, 0 at padding.
    label_smoothing: the smoothing mass epsilon_ls in [0, 1).

  Returns:
    float32 scalars, sums over positions weighted by `weights`: "loss_sum" (label-smoothed cross
    entropy, the training loss), "nll_sum" (unsmoothed negative log-likelihood, for perplexity),
    "accuracy_sum" (positions whose target logit is the row's maximum, a tie counting as a hit)
    and "weight_sum". Only "loss_sum" carries a gradient to the logits.
  """
  _check_shapes(logits, targets, weights)
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  nll, uniform, correct = _token_terms(logits, targets)
  loss = _smoothed_loss(nll, uniform, logits.shape[-1], label_smoothing)  # (B, T)
  weights = weights.astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(loss * weights),
      "nll_sum": jnp.sum(jax.lax.stop_gradient(nll) * weights),
      "accuracy_sum": jnp.sum(jax.lax.stop_gradient(correct) * weights),
      "weight_sum": jnp.sum(weights),
  }
