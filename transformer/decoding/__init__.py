"""Decoding for the Transformer: greedy, beam search (section 6.1 of "Attention Is All You Need")
and sampling. Knows nothing about the model: the core functions drive any
`step_fn(tokens (B,), cache) -> (logits (B, V), cache)`.

Core (model-agnostic, `lax.while_loop`, no Python loop per token):
  greedy(step_fn, cache, *, batch_size, max_decode_len, bos_id, eos_id, pad_id=0) -> (B, L)
  beam_search(step_fn, cache, *, batch_size, beam_size, max_decode_len, bos_id, eos_id,
              alpha=0.6, pad_id=0, early_stopping="exact")
      -> (sequences (B, K, L), scores (B, K)), best first; early_stopping "heuristic" stops
      as Hugging Face does by default
  sample_tokens(step_fn, cache, rng, *, batch_size, max_decode_len, bos_id, eos_id, pad_id=0,
                temperature=1.0, top_k=None, top_p=None, prompt=None, prompt_lengths=None)
  length_penalty(length, alpha), expand_to_beams(tree, beam_size), filter_logits(logits, ...)

Model drivers (duck-typed on `config`, `init_cache`, `decode_step`; each jit-able as one program,
e.g. `nnx.jit(greedy_translate, static_argnames="max_decode_len")(model, inputs)`):
  greedy_translate(model, inputs, *, max_decode_len=None, inputs_segmentation=None) -> (B, L)
  beam_search_translate(model, inputs, *, beam_size=4, alpha=0.6, max_decode_len=None,
                        inputs_segmentation=None) -> (best (B, L), score (B,))
  sample(lm, prompt, rng, *, max_decode_len, temperature=1.0, top_k=None, top_p=None)
      -> (B, L) prompt + continuation (temperature=0: greedy)
Modules: `beam` (beam search), `sampling` (greedy, sampling), `drivers` (model drivers).
Outputs exclude BOS and hold `pad_id` after EOS; PAD and BOS are never generated (masked out
of every step's scores), and `forced_eos=True` makes the L-th token EOS (Marian's rule). The
translation limit defaults to the paper's input length + EXTRA_DECODE_LEN (50: padded source
width S + 50, capped by the model's `max_len`).
"""

from transformer.decoding.beam import EARLY_STOPPING
from transformer.decoding.beam import beam_search
from transformer.decoding.beam import expand_to_beams
from transformer.decoding.beam import length_penalty
from transformer.decoding.drivers import EXTRA_DECODE_LEN
from transformer.decoding.drivers import beam_search_translate
from transformer.decoding.drivers import greedy_translate
from transformer.decoding.drivers import sample
from transformer.decoding.sampling import filter_logits
from transformer.decoding.sampling import greedy
from transformer.decoding.sampling import sample as sample_tokens

__all__ = [
    "greedy", "beam_search", "sample_tokens", "greedy_translate", "beam_search_translate",
    "sample", "length_penalty", "expand_to_beams", "filter_logits", "EXTRA_DECODE_LEN",
    "EARLY_STOPPING",
]
