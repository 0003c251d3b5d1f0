"""Batch layouts: which sides of an example a model family reads and which batch keys they fill.

A layout is a plain value handed to the pipeline by the caller (a `transformer.training.tasks`
Task holds one), so the pipeline knows layouts, never model families. The pipeline encodes the
sides of each example (+ EOS), adds a corrupted copy and its weights for masked layouts, lays
them out as (sides, B, L) tokens / positions / segmentation, and names them with `keys`.
"""

import dataclasses

import numpy as np

# What a batch key holds: the tokens, positions or segmentation of a side, or a side's tokens
# as float32 weights.
ARRAY_KINDS = ("tokens", "positions", "segmentation", "weights")


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """How examples become batches.

  Attributes:
    name: a short name for messages and cache keys.
    monolingual: read one side of the data (the source language, or the single file of
      `text:`) instead of (source, target).
    masked: append (corrupted copy, weights) of side 0 to each example (masked-LM corruption:
      `DataConfig.mask_rate`, 80% [MASK], 10% random, 10% unchanged).
    keys: (batch key, side, kind) triples; side indexes the sides after masking (0 source or
      text, 1 target, or for masked layouts 1 corrupted and 2 weights); kind is one of
      ARRAY_KINDS.
  """

  name: str
  monolingual: bool
  masked: bool
  keys: tuple[tuple[str, int, str], ...]

  def __post_init__(self):
    for key, side, kind in self.keys:
      if kind not in ARRAY_KINDS:
        raise ValueError(f"layout {self.name!r}: key {key!r} has kind {kind!r}; expected one of "
                         f"{ARRAY_KINDS}")
      if not 0 <= side < self.num_sides:
        raise ValueError(f"layout {self.name!r}: key {key!r} reads side {side} of "
                         f"{self.num_sides}")

  @property
  def num_sides(self) -> int:
    """Sides of an example after masking."""
    return (1 if self.monolingual else 2) + (2 if self.masked else 0)

  def name_arrays(self, tokens: np.ndarray, positions: np.ndarray,
                  segmentation: np.ndarray) -> dict[str, np.ndarray]:
    """Names the (sides, B, L) int32 arrays of `batching.assemble` with this layout's keys."""
    arrays = {"tokens": tokens, "positions": positions, "segmentation": segmentation,
              "weights": tokens}
    batch = {}
    for key, side, kind in self.keys:
      batch[key] = arrays[kind][side].astype(np.float32 if kind == "weights" else np.int32)
    return batch


def _side(prefix: str, side: int) -> tuple[tuple[str, int, str], ...]:
  return ((prefix, side, "tokens"), (f"{prefix}_position", side, "positions"),
          (f"{prefix}_segmentation", side, "segmentation"))


# Parallel text: the source is `inputs`, the target `targets` (encoder-decoder translation).
PAIRS = BatchLayout(name="pairs", monolingual=False, masked=False,
                    keys=_side("inputs", 0) + _side("targets", 1))
# Monolingual text as `targets` (next-token prediction).
TEXT = BatchLayout(name="text", monolingual=True, masked=False, keys=_side("targets", 0))
# Monolingual text corrupted as `inputs`, the original as `targets`, 1.0 `weights` where
# tokens are to be predicted (masked-token prediction).
MASKED_TEXT = BatchLayout(
    name="masked_text", monolingual=True, masked=True,
    keys=_side("inputs", 1) + (("targets", 0, "tokens"), ("weights", 2, "weights")))
