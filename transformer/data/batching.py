"""Batch plans: which examples go to which row of which batch, per epoch, from token lengths.

A plan is a pure function of (lengths, seed, epoch), so a resumed run recomputes exactly the
batches of an uninterrupted one. Two schemes, both with a small fixed set of batch shapes:
length buckets with a batch size per bucket from a token budget (Vaswani et al., 2017, 5.1:
"batched together by approximate sequence length"), or packing several examples per row.
"""

import dataclasses

import numpy as np

# Bucket lengths, cut at max_len; few enough that the jitted step compiles a handful of times.
_BUCKET_LENGTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
# Rows kept open by first-fit packing; more fill rows better but cost time per example.
_OPEN_ROWS = 8


@dataclasses.dataclass(frozen=True)
class Batch:
  """One global batch of the plan.

  Attributes:
    shape: index into the plan's shapes (rows, length).
    examples: example indices, row after row.
    row_sizes: (rows,) number of examples of each row (0 for a padding row).
  """

  shape: int
  examples: np.ndarray
  row_sizes: np.ndarray

  def rows_slice(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples and row sizes of rows [start, stop)."""
    offsets = np.concatenate([[0], np.cumsum(self.row_sizes)])
    return self.examples[offsets[start]:offsets[stop]], self.row_sizes[start:stop]


def bucket_shapes(max_len: int, tokens_per_batch: int, multiple: int) -> list[tuple[int, int]]:
  """Global (rows, length) of each length bucket; rows * length <= tokens_per_batch.

  Args:
    max_len: longest example, in tokens.
    tokens_per_batch: token budget of a batch per side, padding included.
    multiple: rows are a multiple of this (the number of data shards).

  Returns:
    (rows, length) per bucket, by increasing length; the last length is max_len.
  """
  lengths = [n for n in _BUCKET_LENGTHS if n < max_len] + [max_len]
  shapes = [((tokens_per_batch // n) // multiple * multiple, n) for n in lengths]
  if shapes[-1][0] == 0:
    raise ValueError(f"tokens_per_batch={tokens_per_batch} cannot hold {multiple} rows (one per "
                     f"data shard) of max_len={max_len} tokens; raise tokens_per_batch to at "
                     f"least {multiple * max_len}.")
  return shapes


def packed_shape(max_len: int, tokens_per_batch: int, multiple: int) -> tuple[int, int]:
  """Global (rows, length) of packed batches."""
  return bucket_shapes(max_len, tokens_per_batch, multiple)[-1]


def assign_buckets(lengths: np.ndarray, shapes: list[tuple[int, int]]) -> np.ndarray:
  """(N,) bucket index of each example: the shortest bucket holding all its sides.

  Args:
    lengths: (N, sides) token lengths, at most the last bucket's length.
    shapes: bucket shapes from `bucket_shapes`.
  """
  bounds = np.array([n for _, n in shapes])
  return np.searchsorted(bounds, lengths.max(axis=1), side="left")


def plan_buckets(kept: np.ndarray, buckets: np.ndarray, shapes: list[tuple[int, int]],
                 seed: int, epoch: int) -> list[Batch]:
  """Shuffles each bucket, cuts it into batches (the last one padded), shuffles the batches.

  The number of batches does not depend on the epoch.

  Args:
    kept: (N,) bool, examples to use.
    buckets: (N,) bucket of each example.
    shapes: bucket shapes.
    seed: shuffling seed.
    epoch: epoch number; each epoch has its own shuffle.
  """
  rng = np.random.default_rng([seed, epoch])
  batches = []
  for b, (rows, _) in enumerate(shapes):
    members = rng.permutation(np.flatnonzero(kept & (buckets == b)))
    for start in range(0, members.size, rows):
      chunk = members[start:start + rows]
      sizes = np.zeros(rows, np.int32)
      sizes[:chunk.size] = 1
      batches.append(Batch(b, chunk, sizes))
  return [batches[i] for i in rng.permutation(len(batches))]


def count_bucket_batches(kept: np.ndarray, buckets: np.ndarray,
                         shapes: list[tuple[int, int]]) -> int:
  """Batches per epoch of `plan_buckets`."""
  return sum(-(-int(np.sum(kept & (buckets == b))) // rows) for b, (rows, _) in enumerate(shapes))


def plan_packing(kept: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], seed: int,
                 epoch: int) -> list[Batch]:
  """Shuffles the examples and packs them first-fit into rows, every side within the row length.

  Args:
    kept: (N,) bool, examples to use.
    lengths: (N, sides) token lengths.
    shape: (rows, length) of a batch.
    seed: shuffling seed.
    epoch: epoch number.
  """
  rows_per_batch, length = shape
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(np.flatnonzero(kept))
  open_rows, open_used, done = [], [], []
  for i, need in zip(order.tolist(), lengths[order].tolist()):
    for r, used in enumerate(open_used):
      if all(u + n <= length for u, n in zip(used, need)):
        open_rows[r].append(i)
        open_used[r] = [u + n for u, n in zip(used, need)]
        break
    else:
      if len(open_rows) == _OPEN_ROWS:
        done.append(open_rows.pop(0))
        open_used.pop(0)
      open_rows.append([i])
      open_used.append(list(need))
  done.extend(open_rows)
  batches = []
  for start in range(0, len(done), rows_per_batch):
    rows = done[start:start + rows_per_batch]
    sizes = np.zeros(rows_per_batch, np.int32)
    sizes[:len(rows)] = [len(r) for r in rows]
    batches.append(Batch(0, np.array([i for r in rows for i in r], np.int64), sizes))
  return batches


def assemble(rows: list[list[tuple[np.ndarray, ...]]], num_rows: int, length: int,
             num_sides: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lays rows of examples out as padded arrays (flax wmt packed-example convention).

  Args:
    rows: per row, its examples; an example is one (n,) int array per side.
    num_rows: B, rows of the output (missing rows are padding).
    length: L, tokens per row.
    num_sides: number of sides.

  Returns:
    tokens, positions, segmentation: each (sides, B, L) int32. Segmentation is 0 on padding and
    k on the k-th example of a row (from 1); positions restart at 0 for every example.
  """
  tokens = np.zeros((num_sides, num_rows, length), np.int32)
  positions = np.zeros_like(tokens)
  segmentation = np.zeros_like(tokens)
  for r, examples in enumerate(rows):
    for s in range(num_sides):
      start = 0
      for k, example in enumerate(examples, start=1):
        n = example[s].size
        tokens[s, r, start:start + n] = example[s]
        positions[s, r, start:start + n] = np.arange(n)
        segmentation[s, r, start:start + n] = k
        start += n
  return tokens, positions, segmentation
