"""Drivers that run greedy decoding, beam search and sampling on a model by duck typing.

A translation model needs `config` (with `bos_id`, `eos_id`, `pad_id`, `max_len`),
`init_cache(inputs, max_decode_len, inputs_positions=None, inputs_segmentation=None)` and
`decode_step(tokens, cache)`; a language model needs `init_cache(batch_size, max_decode_len)`
instead. `transformer.model.EncoderDecoder` / `DecoderOnly` qualify; this module imports neither.
Each driver traces to one program: wrap it in `nnx.jit` (static: the keyword-only ints/floats).
"""

from typing import Any

import jax
import jax.numpy as jnp

from transformer.decoding import beam as beam_lib
from transformer.decoding import sampling as sampling_lib

# The paper's output limit: input length + 50 (section 6.1).
EXTRA_DECODE_LEN = 50


def _translation_len(model: Any, inputs: jax.Array, max_decode_len: int | None) -> int:
  if max_decode_len is not None:
    return max_decode_len
  # Input length + 50 uses the padded width S, capped by the positions the model has.
  return min(inputs.shape[1] + EXTRA_DECODE_LEN, model.config.max_len)


def greedy_translate(
    model: Any,
    inputs: jax.Array,
    *,
    max_decode_len: int | None = None,
    inputs_segmentation: jax.Array | None = None,
    forced_eos: bool = False,
) -> jax.Array:
  """Greedy translation: encoder once, then one argmax token per step from the cached decoder.

  Args:
    model: an encoder-decoder (see module docstring).
    inputs: int (B, S) source ids, `pad_id` padded.
    max_decode_len: L; default min(S + 50, model.config.max_len).
    inputs_segmentation: int (B, S), 0 = padding; default `inputs != pad_id`.
    forced_eos: the L-th token is EOS (Marian models' rule).

  Returns:
    int32 (B, L) target ids without BOS, ending in EOS then `pad_id`.
  """
  cfg = model.config
  length = _translation_len(model, inputs, max_decode_len)
  cache = model.init_cache(inputs, length, inputs_segmentation=inputs_segmentation)
  return sampling_lib.greedy(model.decode_step, cache, batch_size=inputs.shape[0],
                           max_decode_len=length, bos_id=cfg.bos_id, eos_id=cfg.eos_id,
                           pad_id=cfg.pad_id, forced_eos=forced_eos)


def beam_search_translate(
    model: Any,
    inputs: jax.Array,
    *,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_decode_len: int | None = None,
    inputs_segmentation: jax.Array | None = None,
    forced_eos: bool = False,
    early_stopping: str = "exact",
) -> tuple[jax.Array, jax.Array]:
  """Beam-search translation with the paper's defaults (beam 4, alpha 0.6, limit S + 50).

  Args:
    model: an encoder-decoder (see module docstring).
    inputs: int (B, S) source ids, `pad_id` padded.
    beam_size: K.
    alpha: length-penalty exponent.
    max_decode_len: L; default min(S + 50, model.config.max_len).
    inputs_segmentation: int (B, S), 0 = padding; default `inputs != pad_id`.
    forced_eos: the L-th token is EOS (Marian models' rule).
    early_stopping: "exact" or "heuristic" (see `beam.beam_search`).

  Returns:
    (best sequences int32 (B, L) without BOS, `pad_id` after EOS; their scores float32 (B,)).
  """
  cfg = model.config
  length = _translation_len(model, inputs, max_decode_len)
  # The encoder runs once, on B rows; beam_search copies its cache to B * K rows.
  cache = model.init_cache(inputs, length, inputs_segmentation=inputs_segmentation)
  sequences, scores = beam_lib.beam_search(
      model.decode_step, cache, batch_size=inputs.shape[0], beam_size=beam_size,
      max_decode_len=length, bos_id=cfg.bos_id, eos_id=cfg.eos_id, alpha=alpha,
      pad_id=cfg.pad_id, forced_eos=forced_eos, early_stopping=early_stopping)
  return sequences[:, 0], scores[:, 0]


def sample(
    model: Any,
    prompt: jax.Array,
    rng: jax.Array | None,
    *,
    max_decode_len: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
  """Continues prompts with a causal language model.

  Args:
    model: a decoder-only model (see module docstring).
    prompt: int (B, P) left-aligned prompt ids, `pad_id` padded (P may be 0).
    rng: PRNG key (None allowed when temperature == 0).
    max_decode_len: L, total tokens per row, prompt included (<= model.config.max_len).
    temperature: 0 for greedy, else the softmax temperature.
    top_k: keep the k most likely tokens.
    top_p: keep the top-p nucleus.

  Returns:
    int32 (B, L): each prompt followed by its continuation, `pad_id` after EOS.
  """
  cfg = model.config
  prompt = jnp.asarray(prompt, jnp.int32)
  lengths = jnp.sum(prompt != cfg.pad_id, axis=1)
  cache = model.init_cache(prompt.shape[0], max_decode_len)
  return sampling_lib.sample(
      model.decode_step, cache, rng, batch_size=prompt.shape[0], max_decode_len=max_decode_len,
      bos_id=cfg.bos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id, temperature=temperature,
      top_k=top_k, top_p=top_p, prompt=prompt, prompt_lengths=lengths)
