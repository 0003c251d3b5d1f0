"""Masked-LM corruption of BERT (Devlin et al., 2019): of the chosen tokens 80% [MASK], 10% random,
10% unchanged."""

import numpy as np

from transformer.data import tokenizer as tokenizer_lib


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, mask_rate: float,
                vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Chooses round(mask_rate * n), at least one, of the n ordinary tokens of `ids`; corrupts them.

  Special tokens (EOS, PAD...) are never chosen. Random replacements are ordinary tokens.

  Args:
    ids: (T,) int32 token ids of one example.
    rng: the example's generator (seeded per example, so results do not depend on sharding).
    mask_rate: fraction of ordinary tokens chosen for prediction.
    vocab_size: V, the number of ids.

  Returns:
    corrupted: (T,) int32 ids with chosen tokens replaced.
    weights: (T,) float32, 1.0 at chosen positions, else 0.0.
  """
  candidates = np.flatnonzero(ids >= tokenizer_lib.NUM_SPECIAL)
  corrupted = ids.astype(np.int32).copy()
  weights = np.zeros(ids.shape, np.float32)
  if candidates.size == 0:
    return corrupted, weights
  count = max(1, int(round(mask_rate * candidates.size)))
  chosen = rng.choice(candidates, size=count, replace=False)
  action = rng.random(count)
  random_ids = rng.integers(tokenizer_lib.NUM_SPECIAL, vocab_size, count)
  to_mask = chosen[action < 0.8]
  to_random = action >= 0.9
  corrupted[to_mask] = tokenizer_lib.MASK_ID
  corrupted[chosen[to_random]] = random_ids[to_random]
  weights[chosen] = 1.0
  return corrupted, weights
