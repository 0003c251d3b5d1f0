"""Greedy decoding and sampling on toy step functions: filtering, prompts, EOS handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import decoding

BOS, EOS, PAD = 2, 3, 0


def _fixed_step(probs):
  """Step function whose next-token distribution is `probs` (V,) whatever the input."""
  logits = jnp.log(jnp.asarray(probs, jnp.float32))

  def step_fn(tokens, cache):
    return jnp.broadcast_to(logits, (tokens.shape[0], logits.shape[0])), cache + 1

  return step_fn


def _echo_step(vocab):
  """Step function that predicts `token + 1` (EOS after token 9), recording nothing else."""

  def step_fn(tokens, cache):
    nxt = jnp.where(tokens == 9, EOS, tokens + 1)
    return jax.nn.one_hot(nxt, vocab) * 10.0, cache

  return step_fn


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))

  def kept(x):
    return np.isfinite(np.asarray(x))[0].tolist()

  assert kept(decoding.filter_logits(logits, top_k=2)) == [False, True, False, True]
  # Mass before each token in sorted order: 0, 0.5, 0.8, 0.95.
  assert kept(decoding.filter_logits(logits, top_p=0.7)) == [False, True, False, True]
  assert kept(decoding.filter_logits(logits, top_p=0.85)) == [False, True, True, True]
  assert kept(decoding.filter_logits(logits, top_p=0.1)) == [False, True, False, False]
  with pytest.raises(ValueError, match="top_p"):
    decoding.filter_logits(logits, top_p=0.0)
  with pytest.raises(ValueError, match="top_k"):
    decoding.filter_logits(logits, top_k=0)


def test_greedy_stops_at_eos_and_pads():
  out = decoding.greedy(_echo_step(12), jnp.zeros(()), batch_size=1, max_decode_len=10,
                        bos_id=6, eos_id=EOS, pad_id=PAD)
  np.testing.assert_array_equal(out, [[7, 8, 9, EOS, 0, 0, 0, 0, 0, 0]])


def test_prompt_is_kept_then_continued():
  prompt = jnp.array([[4, 5, 0], [7, 0, 0]])
  out = decoding.sample_tokens(_echo_step(12), jnp.zeros(()), None, batch_size=2,
                               max_decode_len=6, bos_id=BOS, eos_id=EOS, temperature=0.0,
                               prompt=prompt, prompt_lengths=jnp.array([2, 1]))
  np.testing.assert_array_equal(out, [[4, 5, 6, 7, 8, 9], [7, 8, 9, EOS, 0, 0]])


def test_sampling_follows_the_distribution_and_the_filters():
  probs = np.array([0.1, 0.2, 0.0001, 0.05, 0.6499])
  step = _fixed_step(probs)
  run = jax.jit(lambda key, temperature, top_k: decoding.sample_tokens(
      step, jnp.zeros((), jnp.int32), key, batch_size=4000, max_decode_len=1, bos_id=BOS,
      eos_id=EOS, temperature=temperature, top_k=top_k), static_argnums=(1, 2))
  draws = np.asarray(run(jax.random.key(0), 1.0, None))[:, 0]
  freqs = np.bincount(draws, minlength=5) / draws.size
  # PAD (0) and BOS (2) are never drawn; the other tokens keep their relative probabilities.
  allowed = probs * (np.arange(5) != PAD) * (np.arange(5) != BOS)
  np.testing.assert_allclose(freqs, allowed / allowed.sum(), atol=0.03)
  np.testing.assert_array_equal(run(jax.random.key(0), 1.0, None), run(jax.random.key(0), 1.0,
                                                                         None))
  assert not np.array_equal(run(jax.random.key(1), 1.0, None), run(jax.random.key(0), 1.0, None))
  top2 = np.asarray(run(jax.random.key(0), 1.0, 2))
  assert set(np.unique(top2)) == {1, 4}
  # Low temperature concentrates on the mode.
  cold = np.asarray(run(jax.random.key(0), 0.05, None))
  assert (cold == 4).mean() > 0.99


def test_sampling_checks_arguments():
  with pytest.raises(ValueError, match="rng"):
    decoding.sample_tokens(_echo_step(12), jnp.zeros(()), None, batch_size=1, max_decode_len=3,
                           bos_id=BOS, eos_id=EOS)
  with pytest.raises(ValueError, match="prompt length"):
    decoding.sample_tokens(_echo_step(12), jnp.zeros(()), None, batch_size=1, max_decode_len=1,
                           bos_id=BOS, eos_id=EOS, temperature=0.0, prompt=jnp.ones((1, 2), int))


def _pad_and_bos_favoured_step(vocab):
  """Step function under which PAD, then BOS, are by far the most likely tokens."""
  # EOS is unlikely, so no row ends (and no PAD follows an EOS) unless it is forced.
  logits = jnp.zeros((vocab,)).at[PAD].set(20.0).at[BOS].set(15.0).at[5].set(1.0).at[EOS].set(
      -30.0)

  def step_fn(tokens, cache):
    return jnp.broadcast_to(logits, (tokens.shape[0], vocab)), cache

  return step_fn


def test_pad_and_bos_are_never_generated():
  step = _pad_and_bos_favoured_step(8)
  kwargs = dict(batch_size=2, max_decode_len=4, bos_id=BOS, eos_id=EOS, pad_id=PAD)
  greedy = decoding.greedy(step, jnp.zeros(()), **kwargs)
  np.testing.assert_array_equal(greedy, np.full((2, 4), 5))
  sampled = decoding.sample_tokens(step, jnp.zeros(()), jax.random.key(0), temperature=1.0,
                                   **dict(kwargs, batch_size=256))
  assert not np.isin(np.asarray(sampled), [PAD, BOS]).any()
  beams, scores = decoding.beam_search(step, jnp.zeros(()), beam_size=3, alpha=0.0, **kwargs)
  assert not np.isin(np.asarray(beams), [PAD, BOS]).any()
  assert np.isfinite(np.asarray(scores)).all()


def test_forced_eos_ends_every_sequence_at_the_limit():
  step = _pad_and_bos_favoured_step(8)
  kwargs = dict(batch_size=2, max_decode_len=4, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                forced_eos=True)
  np.testing.assert_array_equal(decoding.greedy(step, jnp.zeros(()), **kwargs),
                                np.full((2, 4), [5, 5, 5, EOS]))
  beams, _ = decoding.beam_search(step, jnp.zeros(()), beam_size=2, alpha=0.0, **kwargs)
  assert (np.asarray(beams)[:, :, -1] == EOS).all()


def test_top_p_one_filters_nothing():
  # One dominant token: float32 cumulative probabilities reach 1.0 before the tail tokens,
  # which `mass_before < top_p` would drop for top_p = 1.0.
  logits = jnp.array([[30.0, 0.0, 0.0, 0.0, -1.0]])
  np.testing.assert_array_equal(decoding.filter_logits(logits, top_p=1.0), logits)
  assert np.isinf(np.asarray(decoding.filter_logits(logits, top_p=0.999))).sum() == 4
