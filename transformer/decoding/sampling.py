"""Greedy decoding and sampling (temperature, top-k, nucleus/top-p) on the same model-agnostic
`step_fn(tokens, cache) -> (logits, cache)` interface as beam search, as one `lax.while_loop`.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from transformer.decoding import beam as beam_lib


def filter_logits(
    logits: jax.Array, *, top_k: int | None = None, top_p: float | None = None
) -> jax.Array:
  """Sets logits outside the top-k and/or the top-p nucleus to -inf.

  Args:
    logits: float (B, V).
    top_k: keep the k largest logits (None: all).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p, in
      (0, 1] (None or 1.0: all). The most likely token is always kept.

  Returns:
    float32 (B, V).
  """
  logits = logits.astype(jnp.float32)
  if top_k is not None:
    if top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {top_k}")
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]  # (B, 1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  # top_p = 1.0 keeps everything: the cumulative sum of float32 probabilities can reach 1.0
  # before the last tokens, which the comparison below would then drop.
  if top_p is not None and top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V) descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Probability mass strictly before each token; a token is kept if that mass < top_p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _initial_buffer(batch_size: int, max_decode_len: int, *, bos_id: int, pad_id: int,
                    prompt: jax.Array | None,
                    prompt_lengths: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(buffer int32 (B, L + 1): BOS, prompt, PAD; prompt_end int32 (B,): first unforced index)."""
  b, length = batch_size, max_decode_len
  buffer = jnp.full((b, length + 1), pad_id, jnp.int32).at[:, 0].set(bos_id)  # BOS + L tokens
  prompt_end = jnp.ones((b,), jnp.int32)  # first buffer index that is not forced
  if prompt is not None:
    p = prompt.shape[1]
    if p > length:
      raise ValueError(f"prompt length {p} exceeds max_decode_len={length}")
    buffer = buffer.at[:, 1:p + 1].set(prompt.astype(jnp.int32))
    lengths = jnp.full((b,), p) if prompt_lengths is None else prompt_lengths
    prompt_end = 1 + lengths.astype(jnp.int32)
  return buffer, prompt_end


def _choose(logits: jax.Array, key: jax.Array, *, temperature: float, top_k: int | None,
            top_p: float | None) -> jax.Array:
  """(B,) token ids from float32 logits (B, V): argmax at temperature 0, else a sample."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1)
  filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(key, filtered, axis=-1)


def _decode_step(s: dict, *, step_fn: beam_lib.StepFn, prompt_end: jax.Array, length: int,
                 bos_id: int, eos_id: int, pad_id: int, forced_eos: bool, choose) -> dict:
  """One `while_loop` iteration: feeds buffer[:, i] and writes buffer[:, i + 1] (B,)."""
  i = s["step"]
  tokens = jax.lax.dynamic_index_in_dim(s["buffer"], i, axis=1, keepdims=False)  # (B,)
  logits, cache = step_fn(tokens, s["cache"])
  rng, key = jax.random.split(s["rng"])
  logits = beam_lib.restrict_scores(
      logits.astype(jnp.float32), i, banned_ids=(pad_id, bos_id), eos_id=eos_id,
      force_eos_at=length - 1 if forced_eos else None)
  chosen = choose(logits, key)
  forced = i + 1 < prompt_end  # still inside the prompt
  given = jax.lax.dynamic_index_in_dim(s["buffer"], i + 1, axis=1, keepdims=False)
  nxt = jnp.where(forced, given, jnp.where(s["done"], pad_id, chosen)).astype(jnp.int32)
  buffer = jax.lax.dynamic_update_slice_in_dim(s["buffer"], nxt[:, None], i + 1, axis=1)
  done = s["done"] | (~forced & (nxt == eos_id))
  return dict(step=i + 1, buffer=buffer, done=done, cache=cache, rng=rng)


def sample(
    step_fn: beam_lib.StepFn,
    cache: Any,
    rng: jax.Array | None,
    *,
    batch_size: int,
    max_decode_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    prompt: jax.Array | None = None,
    prompt_lengths: jax.Array | None = None,
    forced_eos: bool = False,
) -> jax.Array:
  """Samples (or, with temperature 0, greedily picks) one continuation per row.

  Feeds BOS, then the prompt tokens (teacher-forced into the cache), then its own choices, until
  every row has emitted EOS or L tokens exist. One `lax.while_loop`, no Python loop per token.
  PAD and BOS are never chosen (`beam.restrict_scores`).

  Args:
    step_fn: `(tokens (B,), cache) -> (logits (B, V), cache)`.
    cache: the step function's initial state for batch size B.
    rng: PRNG key; unused (may be None) when temperature == 0.
    batch_size: B.
    max_decode_len: L, total tokens returned per row (prompt included, BOS excluded).
    bos_id: first token fed.
    eos_id: a row stops after choosing this token.
    pad_id: written after EOS.
    temperature: softmax temperature; 0 means argmax (greedy).
    top_k: sample only among the k most likely tokens.
    top_p: sample only from the top-p nucleus.
    prompt: int (B, P) left-aligned prompt ids, P <= L, or None.
    prompt_lengths: int (B,) real prompt lengths; default P for every row.
    forced_eos: the L-th token is EOS (Marian's rule; see `beam.restrict_scores`).

  Returns:
    int32 (B, L): prompt then generated tokens, `pad_id` after EOS.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature > 0 and rng is None:
    raise ValueError("sampling with temperature > 0 needs an rng key")
  buffer, prompt_end = _initial_buffer(batch_size, max_decode_len, bos_id=bos_id, pad_id=pad_id,
                                       prompt=prompt, prompt_lengths=prompt_lengths)
  state = dict(step=jnp.zeros((), jnp.int32), buffer=buffer,
               done=jnp.zeros((batch_size,), bool), cache=cache,
               rng=jax.random.key(0) if rng is None else rng)
  choose = functools.partial(_choose, temperature=temperature, top_k=top_k, top_p=top_p)
  body_fn = functools.partial(
      _decode_step, step_fn=step_fn, prompt_end=prompt_end, length=max_decode_len, bos_id=bos_id,
      eos_id=eos_id, pad_id=pad_id, forced_eos=forced_eos, choose=choose)

  def cond_fn(s):
    return (s["step"] < max_decode_len) & ~s["done"].all()

  return jax.lax.while_loop(cond_fn, body_fn, state)["buffer"][:, 1:]


def greedy(
    step_fn: beam_lib.StepFn,
    cache: Any,
    *,
    batch_size: int,
    max_decode_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    forced_eos: bool = False,
) -> jax.Array:
  """Greedy decoding: the argmax token at every step (never PAD or BOS).

  Args:
    step_fn: `(tokens (B,), cache) -> (logits (B, V), cache)`.
    cache: initial state for batch size B.
    batch_size: B.
    max_decode_len: L, the most tokens generated (EOS included).
    bos_id: first token fed.
    eos_id: a row stops after emitting it.
    pad_id: written after EOS.
    forced_eos: the L-th token is EOS (Marian's rule).

  Returns:
    int32 (B, L) tokens without BOS, `pad_id` after EOS.
  """
  return sample(step_fn, cache, None, batch_size=batch_size, max_decode_len=max_decode_len,
                bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, temperature=0.0,
                forced_eos=forced_eos)
