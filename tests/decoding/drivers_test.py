"""The model drivers on real (tiny) models: cached decoding agrees with uncached forward passes,
beam scores are the model's scores, and each driver compiles to one program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import decoding
from transformer import model as model_lib

INPUTS = jnp.array([[5, 6, 7, 8, 3, 0, 0], [9, 10, 3, 0, 0, 0, 0]])
LENGTH = 8
# A token this random model emits after a few steps in one row and never in the other, so both
# the EOS path and the length limit are exercised (PAD and BOS never being emitted).
EOS = 15

greedy_translate = nnx.jit(decoding.greedy_translate, static_argnames="max_decode_len")
beam_search_translate = nnx.jit(decoding.beam_search_translate,
                                static_argnames=("beam_size", "alpha", "max_decode_len"))


@pytest.fixture(scope="module")
def model():
  cfg = model_lib.TransformerConfig.tiny(num_encoder_layers=1, num_decoder_layers=1, eos_id=EOS)
  return model_lib.EncoderDecoder(cfg, rngs=nnx.Rngs(7))


@pytest.fixture(scope="module")
def full_log_probs(model):
  """log P(next token) for every prefix, by uncached teacher forcing over a fixed width."""
  forward = nnx.jit(lambda m, dec: jax.nn.log_softmax(
      m(INPUTS, dec, decoder_segmentation=jnp.ones_like(dec))))

  def log_probs(prefixes):  # prefixes (B, T) without BOS -> (B, T + 1, V)
    b, t = prefixes.shape
    dec = jnp.zeros((b, LENGTH + 1), jnp.int32).at[:, 0].set(model.config.bos_id)
    dec = dec.at[:, 1:t + 1].set(prefixes)
    return forward(model, dec)[:, :t + 1]

  return log_probs


def test_greedy_translate_equals_uncached_greedy(model, full_log_probs):
  got = np.asarray(greedy_translate(model, INPUTS, max_decode_len=LENGTH))
  expected = np.zeros((2, 0), np.int32)
  never = [model.config.pad_id, model.config.bos_id]  # Decoding never emits PAD or BOS.
  for _ in range(LENGTH):
    log_probs = np.array(full_log_probs(jnp.asarray(expected)))[:, -1]
    log_probs[:, never] = -np.inf
    nxt = np.argmax(log_probs, axis=-1)
    expected = np.concatenate([expected, nxt[:, None]], axis=1)
  ended = []
  for row in range(2):
    seq = expected[row].tolist()
    n = seq.index(EOS) + 1 if EOS in seq else LENGTH
    np.testing.assert_array_equal(got[row, :n], seq[:n])
    assert (got[row, n:] == 0).all()
    ended.append(EOS in seq)
  assert ended == [False, True]


def test_beam_one_equals_greedy_on_a_model(model):
  beam, _ = beam_search_translate(model, INPUTS, beam_size=1, alpha=0.0, max_decode_len=LENGTH)
  np.testing.assert_array_equal(beam, greedy_translate(model, INPUTS, max_decode_len=LENGTH))


def test_beam_scores_are_the_models_scores(model, full_log_probs):
  alpha = 0.6
  sequences, scores = beam_search_translate(model, INPUTS, beam_size=4, alpha=alpha,
                                            max_decode_len=LENGTH)
  log_probs = np.asarray(full_log_probs(sequences))
  for row in range(2):
    seq = np.asarray(sequences[row]).tolist()
    n = seq.index(EOS) + 1 if EOS in seq else LENGTH
    total = sum(log_probs[row, t, seq[t]] for t in range(n))
    expected = total / ((5.0 + n) / 6.0) ** alpha
    assert float(scores[row]) == pytest.approx(expected, rel=1e-4, abs=1e-4)
  # Beam search scores at least as well as greedy under the same penalty.
  greedy = np.asarray(greedy_translate(model, INPUTS, max_decode_len=LENGTH))
  greedy_lp = np.asarray(full_log_probs(jnp.asarray(greedy)))
  for row in range(2):
    seq = greedy[row].tolist()
    n = seq.index(EOS) + 1 if EOS in seq else LENGTH
    greedy_score = sum(greedy_lp[row, t, seq[t]] for t in range(n)) / ((5.0 + n) / 6.0) ** alpha
    assert float(scores[row]) >= greedy_score - 1e-4


def test_translate_defaults_and_single_trace(model):
  traces = []

  def translate(m, inputs):
    traces.append(1)
    return decoding.beam_search_translate(m, inputs)  # beam 4, alpha 0.6, S + 50

  compiled = nnx.jit(translate)
  tokens, scores = compiled(model, INPUTS)
  assert tokens.shape == (2, INPUTS.shape[1] + 50) and scores.shape == (2,)
  compiled(model, INPUTS.at[0, 0].set(11))
  assert len(traces) == 1


def test_sample_greedy_lm_equals_uncached_argmax():
  lm = model_lib.DecoderOnly(model_lib.TransformerConfig.tiny(num_decoder_layers=1),
                             rngs=nnx.Rngs(0))
  prompt = jnp.array([[5, 6, 7], [8, 9, 0]])
  run = nnx.jit(decoding.sample, static_argnames=("max_decode_len", "temperature", "top_k",
                                                  "top_p"))
  out = np.asarray(run(lm, prompt, None, max_decode_len=6, temperature=0.0))
  np.testing.assert_array_equal(out[0, :3], [5, 6, 7])
  np.testing.assert_array_equal(out[1, :2], [8, 9])
  forward = nnx.jit(lambda m, t: m(t, segmentation=jnp.ones_like(t)))
  for row, start in ((0, 3), (1, 2)):
    seq = out[row].tolist()
    tokens = jnp.array([[lm.config.bos_id] + seq[:-1]])
    logits = np.array(forward(lm, tokens))[0]
    logits[:, [lm.config.pad_id, lm.config.bos_id]] = -np.inf  # never generated
    predicted = np.argmax(logits, axis=-1)
    end = seq.index(3) + 1 if 3 in seq[start:] else len(seq)
    np.testing.assert_array_equal(seq[start:end], predicted[start:end])
  sampled = run(lm, prompt, jax.random.key(0), max_decode_len=6, temperature=1.0, top_p=0.9)
  np.testing.assert_array_equal(sampled[:, :2], prompt[:, :2])
