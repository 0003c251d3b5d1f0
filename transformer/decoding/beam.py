"""Beam search with the GNMT length penalty, as used in "Attention Is All You Need" (section 6.1:
beam 4, alpha 0.6). Model-agnostic: it only sees `step_fn(tokens, cache) -> (logits, cache)`.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]

# How the search decides that no live hypothesis can win any more (see `beam_search`).
EARLY_STOPPING = ("exact", "heuristic")
# Finite stand-in for log(0): keeps arithmetic NaN-free; no real hypothesis scores this low.
NEG_INF = -1.0e9


def length_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
  """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al., 2016)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def restrict_scores(scores: jax.Array, step: jax.Array, *, banned_ids: tuple[int, ...],
                    eos_id: int, force_eos_at: int | None) -> jax.Array:
  """Applies the decoding rules to next-token scores (log-probabilities or logits).

  Banned tokens (PAD and BOS: never outputs) get NEG_INF. At step `force_eos_at` every token
  but EOS gets NEG_INF and EOS gets 0, so a hypothesis that reaches the length limit ends there
  without changing its score (Hugging Face's `forced_eos_token_id`, which Marian models set).
  Applied after the log-softmax, like transformers' logits processors, so kept scores stay the
  model's log-probabilities.

  Args:
    scores: float32 (..., V).
    step: int32 scalar, the index of the token being chosen (0 = first after BOS).
    banned_ids: ids that are never chosen.
    eos_id: the end-of-sequence id.
    force_eos_at: the step at which only EOS is allowed, or None.

  Returns:
    float32 (..., V).
  """
  vocab_ids = jnp.arange(scores.shape[-1])
  banned = jnp.isin(vocab_ids, jnp.asarray(banned_ids, jnp.int32))
  scores = jnp.where(banned, NEG_INF, scores)
  if force_eos_at is not None:
    only_eos = jnp.where(vocab_ids == eos_id, 0.0, NEG_INF).astype(scores.dtype)
    scores = jnp.where(step == force_eos_at, only_eos, scores)
  return scores


def expand_to_beams(tree: Any, beam_size: int) -> Any:
  """Repeats every batch-leading leaf (ndim >= 1) K times: (B, ...) -> (B * K, ...).

  Scalars (e.g. a shared cache index) are left as they are. Rows b * K .. b * K + K - 1 are
  the beams of batch element b.
  """
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, beam_size, axis=0), tree)


def _gather_beams(tree: Any, beam_indices: jax.Array, batch_size: int, old_beams: int) -> Any:
  """Selects beams: leaves (B * K_old, ...) -> (B * K_new, ...) via indices (B, K_new)."""
  new_beams = beam_indices.shape[1]

  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape((batch_size, old_beams) + x.shape[1:])  # (B, K_old, ...)
    x = jnp.take_along_axis(x, beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2)),
                            axis=1)  # (B, K_new, ...)
    return x.reshape((batch_size * new_beams,) + x.shape[2:])

  return jax.tree.map(gather, tree)


def _gather_changed_beams(new_cache: Any, old_cache: Any, beam_indices: jax.Array,
                          batch_size: int, beam_size: int) -> Any:
  """`_gather_beams` on the leaves that `step_fn` changed; the others are returned as they are.

  A leaf that the step function passes through untouched (the very same traced value, e.g. the
  encoder's cross-attention keys and values) still holds K identical copies per batch element,
  as `expand_to_beams` made it, so gathering beams within the element would be an identity.
  Skipping it saves copying (B * K, S, N, H) per layer at every step.
  """
  def gather(new, old):
    if new is old:
      return new
    return _gather_beams(new, beam_indices, batch_size, beam_size)

  return jax.tree.map(gather, new_cache, old_cache)


def _initial_state(cache: Any, b: int, k: int, length: int, pad_id: int) -> dict:
  """The search state before the first step: only beam 0 of each element is live."""
  # The K identical copies start at NEG_INF but beam 0, so the first step expands one.
  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))  # (B, K)
  return dict(
      step=jnp.zeros((), jnp.int32),
      alive_seqs=jnp.full((b, k, length), pad_id, jnp.int32),
      alive_logp=alive_logp,
      finished_seqs=jnp.full((b, k, length), pad_id, jnp.int32),
      finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
      finished_flags=jnp.zeros((b, k), bool),
      cache=expand_to_beams(cache, k),
  )


def _is_running(s: dict, *, length: int, max_penalty: jax.Array, alpha: float,
                early_stopping: str) -> jax.Array:
  """Whether any batch element may still improve its K finished hypotheses."""
  # Exact: the best any live beam can still reach (its log-prob can only fall, and the
  # penalty divisor is largest at length L). Heuristic: its score at the current length.
  divisor = max_penalty if early_stopping == "exact" else length_penalty(s["step"], alpha)
  best_alive = s["alive_logp"][:, 0] / divisor  # (B,)
  worst_finished = jnp.where(s["finished_flags"], s["finished_scores"], NEG_INF).min(axis=1)
  all_full = s["finished_flags"].all(axis=1)
  done = all_full & (worst_finished >= best_alive)
  return (s["step"] < length) & ~done.all()


def _top_candidates(s: dict, log_probs: jax.Array, k: int, i: jax.Array):
  """The 2K best one-token extensions: (log-probs (B, 2K), parent beams, tokens, sequences)."""
  b, _, vocab = log_probs.shape
  candidates = (s["alive_logp"][:, :, None] + log_probs).reshape(b, k * vocab)
  # 2K candidates: each beam contributes at most one EOS, so at least K are not EOS.
  top_logp, top_index = jax.lax.top_k(candidates, 2 * k)  # (B, 2K)
  top_beam, top_token = top_index // vocab, top_index % vocab
  top_seqs = jnp.take_along_axis(s["alive_seqs"], top_beam[:, :, None], axis=1)  # (B, 2K, L)
  top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_token[:, :, None], i, axis=2)
  return top_logp, top_beam, top_token, top_seqs


def _grow(s: dict, *, step_fn: StepFn, batch_size: int, beam_size: int, length: int,
          bos_id: int, eos_id: int, pad_id: int, alpha: float, forced_eos: bool) -> dict:
  """One step: extend every live beam by one token, keep the K best live and K best finished."""
  b, k, i = batch_size, beam_size, s["step"]
  previous = jax.lax.dynamic_index_in_dim(s["alive_seqs"], jnp.maximum(i - 1, 0), axis=2,
                                          keepdims=False)  # (B, K)
  tokens = jnp.where(i == 0, bos_id, previous).reshape(b * k)
  logits, cache = step_fn(tokens, s["cache"])
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, -1)
  log_probs = restrict_scores(log_probs, i, banned_ids=(pad_id, bos_id), eos_id=eos_id,
                              force_eos_at=length - 1 if forced_eos else None)
  top_logp, top_beam, top_token, top_seqs = _top_candidates(s, log_probs, k, i)
  is_eos = top_token == eos_id
  # A hypothesis ends only if its EOS ranks among the K best candidates (as in Hugging Face
  # transformers), so beam 1 with alpha 0 is exactly greedy decoding. Candidates grown from
  # the NEG_INF placeholder beams of the first step are not real.
  ends = is_eos & (jnp.arange(2 * k) < k)[None, :] & (top_logp > NEG_INF / 2)

  # Live beams: the K best candidates that did not just end.
  alive_logp, alive_pick = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)  # (B, K)
  alive_seqs = jnp.take_along_axis(top_seqs, alive_pick[:, :, None], axis=1)
  parent = jnp.take_along_axis(top_beam, alive_pick, axis=1)  # (B, K) beam each came from
  cache = _gather_changed_beams(cache, s["cache"], parent, b, k)

  # Finished: merge the K kept so far with the candidates that just emitted EOS.
  new_scores = jnp.where(ends, top_logp / length_penalty(i + 1, alpha), NEG_INF)
  merged_scores = jnp.concatenate([s["finished_scores"], new_scores], axis=1)  # (B, 3K)
  merged_seqs = jnp.concatenate([s["finished_seqs"], top_seqs], axis=1)
  merged_flags = jnp.concatenate([s["finished_flags"], ends], axis=1)
  finished_scores, pick = jax.lax.top_k(merged_scores, k)
  return dict(
      step=i + 1,
      alive_seqs=alive_seqs,
      alive_logp=alive_logp,
      finished_seqs=jnp.take_along_axis(merged_seqs, pick[:, :, None], axis=1),
      finished_scores=finished_scores,
      finished_flags=jnp.take_along_axis(merged_flags, pick, axis=1),
      cache=cache,
  )


def beam_search(
    step_fn: StepFn,
    cache: Any,
    *,
    batch_size: int,
    beam_size: int,
    max_decode_len: int,
    bos_id: int,
    eos_id: int,
    alpha: float = 0.6,
    pad_id: int = 0,
    forced_eos: bool = False,
    early_stopping: str = "exact",
) -> tuple[jax.Array, jax.Array]:
  """Finds the K best sequences under score = log P(Y) / lp(|Y|), stopping at EOS.

  One `lax.while_loop`, stopping once every batch element has K finished hypotheses that no
  live one can beat: "exact" bounds a live hypothesis by the best score it could still reach
  (log P can only fall, lp is largest at length L; T2T and Flax WMT do this), "heuristic" by its
  score at its current length (Hugging Face's default; earlier stops, rarely other results). A
  hypothesis finishes when its EOS ranks among the K best candidates of its step, so beam 1
  with alpha 0 is exactly greedy decoding. PAD and BOS are never chosen (`restrict_scores`).

  Args:
    step_fn: `(tokens (B * K,), cache) -> (logits (B * K, V), cache)`: feeds one token per row
      and returns next-token logits (log-probabilities work too: they are renormalized).
    cache: the step function's state for batch size B (leaves with a leading batch axis, or
      scalars shared by all rows); it is expanded to B * K rows here.
    batch_size: B.
    beam_size: K >= 1.
    max_decode_len: L, the most tokens generated per sequence (EOS included).
    bos_id: first token fed to `step_fn`.
    eos_id: token that ends a hypothesis.
    alpha: length-penalty exponent, >= 0 (0.6 in the paper).
    pad_id: written after EOS in the returned sequences; never generated.
    forced_eos: the L-th token is EOS (adding 0 to the score), as Marian models decode.
    early_stopping: "exact" or "heuristic" (see above).

  Returns:
    (sequences int32 (B, K, L) without BOS, best first, padded with `pad_id` after EOS;
     scores float32 (B, K)). A batch element with no finished hypothesis after L tokens
     returns its live hypotheses, scored with the penalty of length L.
  """
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  if max_decode_len < 1:
    raise ValueError(f"max_decode_len must be >= 1, got {max_decode_len}")
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0 for the early-stopping bound, got {alpha}")
  if early_stopping not in EARLY_STOPPING:
    raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")
  b, k, length = batch_size, beam_size, max_decode_len
  max_penalty = length_penalty(length, alpha)
  running = functools.partial(_is_running, length=length, max_penalty=max_penalty, alpha=alpha,
                              early_stopping=early_stopping)
  grow = functools.partial(_grow, step_fn=step_fn, batch_size=b, beam_size=k, length=length,
                           bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, alpha=alpha,
                           forced_eos=forced_eos)
  s = jax.lax.while_loop(running, grow, _initial_state(cache, b, k, length, pad_id))
  any_finished = s["finished_flags"].any(axis=1)  # (B,)
  sequences = jnp.where(any_finished[:, None, None], s["finished_seqs"], s["alive_seqs"])
  scores = jnp.where(any_finished[:, None], s["finished_scores"], s["alive_logp"] / max_penalty)
  return sequences, scores
