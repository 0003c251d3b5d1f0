"""Beam search on toy step functions: exhaustive optimality, beam 1 = greedy, bookkeeping."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import decoding

BOS, EOS, PAD = 2, 3, 0


def _markov_step(log_probs_table):
  """Step function of a toy model: next-token log-probs depend on (row, position, token).

  The cache carries a per-row id and a shared position, like a real model's cache.
  """
  table = jnp.asarray(log_probs_table)  # (B, L, V, V)

  def step_fn(tokens, cache):
    logits = table[cache["row"], cache["index"], tokens]  # (rows, V)
    return logits, dict(cache, index=cache["index"] + 1)

  return step_fn


def _table(batch, length, vocab, seed):
  logits = jax.random.normal(jax.random.key(seed), (batch, length, vocab, vocab)) * 2.0
  return np.asarray(jax.nn.log_softmax(logits, axis=-1))


def _cache(batch):
  return {"row": jnp.arange(batch, dtype=jnp.int32), "index": jnp.zeros((), jnp.int32)}


def _exhaustive_best(table, row, length, alpha):
  vocab = table.shape[-1]
  best = (-np.inf, None)
  for n in range(1, length + 1):
    for seq in itertools.product(range(vocab), repeat=n):
      if seq[-1] != EOS or EOS in seq[:-1] or PAD in seq or BOS in seq:
        continue  # PAD and BOS are never generated.
      prev, logp = BOS, 0.0
      for t, tok in enumerate(seq):
        logp += table[row, t, prev, tok]
        prev = tok
      score = logp / ((5.0 + n) / 6.0) ** alpha
      best = max(best, (score, seq))
  return best


def _search(table, beam_size, alpha, length):
  batch = table.shape[0]
  return jax.jit(lambda c: decoding.beam_search(
      _markov_step(table), c, batch_size=batch, beam_size=beam_size, max_decode_len=length,
      bos_id=BOS, eos_id=EOS, alpha=alpha, pad_id=PAD))(_cache(batch))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_finds_the_exhaustive_optimum(alpha):
  batch, length, vocab = 3, 4, 4
  table = _table(batch, length, vocab, seed=int(alpha * 10))
  # K = (V - 1)^(L - 1) * V keeps every EOS-free prefix alive and ranks every EOS candidate
  # among the K best: the search is exhaustive.
  sequences, scores = _search(table, beam_size=108, alpha=alpha, length=length)
  for row in range(batch):
    best_score, best_seq = _exhaustive_best(table, row, length, alpha)
    assert float(scores[row, 0]) == pytest.approx(best_score, rel=1e-5)
    got = [int(t) for t in sequences[row, 0]]
    assert got[:len(best_seq)] == list(best_seq)
    assert all(t == PAD for t in got[len(best_seq):])


def test_beams_are_sorted_and_scores_are_consistent():
  batch, length, vocab = 2, 5, 6
  table = _table(batch, length, vocab, seed=3)
  alpha = 0.6
  sequences, scores = _search(table, beam_size=4, alpha=alpha, length=length)
  assert sequences.shape == (2, 4, 5) and scores.shape == (2, 4)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)
  for row in range(batch):
    for k in range(4):
      seq = [int(t) for t in sequences[row, k]]
      if EOS not in seq:
        continue
      n = seq.index(EOS) + 1
      prev, logp = BOS, 0.0
      for t, tok in enumerate(seq[:n]):
        logp += table[row, t, prev, tok]
        prev = tok
      assert float(scores[row, k]) == pytest.approx(logp / ((5.0 + n) / 6.0) ** alpha, rel=1e-5)
      assert all(t == PAD for t in seq[n:])


def test_beam_one_equals_greedy():
  batch, length, vocab = 4, 6, 7
  table = _table(batch, length, vocab, seed=5)
  step_fn = _markov_step(table)
  # alpha = 0: the penalty cannot favour a longer, lower-probability hypothesis over the
  # greedy one, so beam 1 must reproduce greedy decoding exactly.
  beam, _ = _search(table, beam_size=1, alpha=0.0, length=length)
  greedy = jax.jit(lambda c: decoding.greedy(
      step_fn, c, batch_size=batch, max_decode_len=length, bos_id=BOS, eos_id=EOS,
      pad_id=PAD))(_cache(batch))
  np.testing.assert_array_equal(beam[:, 0], greedy)


def test_no_finished_hypothesis_returns_live_beams():
  # EOS is never likely: every hypothesis runs to the length limit.
  table = np.log(np.full((1, 3, 5, 5), 0.24))
  table[..., EOS] = -50.0
  sequences, scores = _search(table, beam_size=2, alpha=0.6, length=3)
  assert EOS not in np.asarray(sequences)
  assert np.isfinite(np.asarray(scores)).all() and float(scores[0, 0]) > -10


def test_expand_to_beams_repeats_batch_leaves_only():
  tree = {"x": jnp.arange(6).reshape(2, 3), "i": jnp.zeros((), jnp.int32)}
  out = decoding.expand_to_beams(tree, 3)
  assert out["x"].shape == (6, 3) and out["i"].shape == ()
  np.testing.assert_array_equal(out["x"][:3], np.tile(np.arange(3), (3, 1)))


def test_length_penalty_and_argument_checks():
  assert float(decoding.length_penalty(1, 0.6)) == pytest.approx(1.0)
  assert float(decoding.length_penalty(7, 1.0)) == pytest.approx(2.0)
  with pytest.raises(ValueError, match="beam_size"):
    _search(_table(1, 2, 4, 0), beam_size=0, alpha=0.6, length=2)
  with pytest.raises(ValueError, match="alpha"):
    _search(_table(1, 2, 4, 0), beam_size=2, alpha=-1.0, length=2)


def test_heuristic_early_stopping_keeps_hypotheses_sorted_and_agrees_on_a_toy_model():
  table = _table(6, 8, 7, seed=11)

  def search(early_stopping):
    run = jax.jit(lambda c: decoding.beam_search(
        _markov_step(table), c, batch_size=6, beam_size=3, max_decode_len=8, bos_id=BOS,
        eos_id=EOS, alpha=0.6, pad_id=PAD, early_stopping=early_stopping))
    sequences, scores = run(_cache(6))
    return np.asarray(sequences), np.asarray(scores)

  exact_seqs, exact_scores = search("exact")
  heuristic_seqs, heuristic_scores = search("heuristic")
  assert np.all(np.diff(heuristic_scores, axis=1) <= 1e-6)  # Best first.
  # Stopping earlier can only lose hypotheses: its best is at most the exact best (and on this
  # toy model they agree).
  assert np.all(heuristic_scores[:, 0] <= exact_scores[:, 0] + 1e-6)
  np.testing.assert_array_equal(heuristic_seqs[:, 0], exact_seqs[:, 0])
  with pytest.raises(ValueError, match="early_stopping must be one of"):
    decoding.beam_search(_markov_step(table), _cache(6), batch_size=6, beam_size=3,
                         max_decode_len=8, bos_id=BOS, eos_id=EOS, early_stopping="never")
