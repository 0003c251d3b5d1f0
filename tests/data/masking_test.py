"""Masked-LM corruption: 15% chosen; of those 80% [MASK], 10% random, 10% unchanged."""

import numpy as np

from transformer.data import masking
from transformer.data import tokenizer as tokenizer_lib


def test_mask_statistics():
  rng = np.random.default_rng(0)
  chosen = masked = randomized = kept = 0
  for _ in range(400):
    ids = np.concatenate([rng.integers(5, 64, 99), [tokenizer_lib.EOS_ID]]).astype(np.int32)
    corrupted, weights = masking.mask_tokens(ids, rng, 0.15, 64)
    assert weights[-1] == 0 and corrupted[-1] == tokenizer_lib.EOS_ID
    assert weights.sum() == 15  # round(0.15 * 99)
    assert np.all(corrupted[weights == 0] == ids[weights == 0])
    sel = weights == 1
    chosen += sel.sum()
    masked += np.sum(corrupted[sel] == tokenizer_lib.MASK_ID)
    same = corrupted[sel] == ids[sel]
    kept += same.sum()
    randomized += np.sum(~same & (corrupted[sel] != tokenizer_lib.MASK_ID))
    assert np.all(corrupted >= 3) and np.all(corrupted < 64)
  assert abs(masked / chosen - 0.8) < 0.03
  # Random replacements equal to the original count as unchanged (about 1 in 59).
  assert abs(randomized / chosen - 0.1 * 58 / 59) < 0.02
  assert abs(kept / chosen - (0.1 + 0.1 / 59)) < 0.02


def test_no_ordinary_token_means_nothing_chosen():
  ids = np.array([tokenizer_lib.EOS_ID], np.int32)
  corrupted, weights = masking.mask_tokens(ids, np.random.default_rng(0), 0.15, 64)
  assert corrupted.tolist() == [3] and weights.tolist() == [0.0]
