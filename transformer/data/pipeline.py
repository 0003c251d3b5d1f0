"""grain input pipeline: source -> tokenize -> filter -> bucket or pack -> per-process batches.

Batches follow the flax wmt packed-example convention (see `transformer/data/__init__.py`).
"""

from collections.abc import Iterator
import dataclasses
import hashlib
import io
import json
import os
import sys
import threading

from absl import flags
from absl import logging
import grain
import numpy as np

from transformer import storage
from transformer.data import batching
from transformer.data import config as config_lib
from transformer.data import layouts
from transformer.data import masking
from transformer.data import sources
from transformer.data import tokenizer as tokenizer_lib

TOKENIZER_FILE = "sentencepiece.model"
# Examples tokenized per call when measuring lengths or training the tokenizer.
_CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class ExampleStats:
  """What happened to the examples of a split; logged when a pipeline is built."""

  num_examples: int  # Examples read from the source.
  num_kept: int  # Examples that reach batches.
  num_too_long: int  # Longer than max_len: dropped (training, overlong="drop") or truncated.
  num_empty: int  # Dropped from training: a side has no token.
  truncated: bool  # Whether num_too_long were truncated (else dropped).
  skipped_lines: dict[str, int]  # Lines the source skipped, by reason.


@dataclasses.dataclass(frozen=True)
class EvalDataset:
  """A finite, ordered evaluation split.

  Global batch k holds examples k*B .. k*B+B-1 (B = global eval batch size), the last batch
  padded with rows whose segmentation is 0; process p holds rows p*B/P .. (p+1)*B/P - 1.

  Attributes:
    batches: this process's rows of every batch, dicts of int32 (float32 `weights`) arrays.
    indices: per batch, (B/P,) int32 example index of each row of this process, -1 on padding.
    sources: source text of every example of the split, in order (all processes).
    references: target text of every example, in order (the text itself for lm / mlm).
    stats: example statistics (overlong examples are truncated, never dropped).
  """

  batches: list[dict[str, np.ndarray]]
  indices: list[np.ndarray]
  sources: list[str]
  references: list[str]
  stats: ExampleStats


def _check_layout(layout: layouts.BatchLayout) -> None:
  if not isinstance(layout, layouts.BatchLayout):
    raise ValueError(f"layout must be a transformer.data.BatchLayout (e.g. the `layout` of a "
                     f"transformer.training.tasks Task), got {layout!r}.")


def get_tokenizer(config: config_lib.DataConfig, workdir: str | os.PathLike, *,
                  layout: layouts.BatchLayout = layouts.PAIRS) -> tokenizer_lib.Tokenizer:
  """The tokenizer of a run: loaded from `workdir`, or trained on the training split and stored.

  Synthetic tasks get a `SyntheticTokenizer` (nothing stored). Otherwise one SentencePiece model
  shared by source and target is trained on the training split (both sides; one for monolingual
  tasks) and written to `{workdir}/sentencepiece.model`, which resumed runs and translation reuse.
  Training is seeded and the file is written atomically, so processes of a multi-host run that
  all call this get the same model.

  Args:
    config: the data config.
    workdir: the run's directory.
    layout: the batch layout (monolingual layouts train on the source side only).

  Returns:
    The tokenizer; its `vocab_size` is the model's V.
  """
  _check_layout(layout)
  if config.dataset.startswith("synthetic/"):
    return tokenizer_lib.SyntheticTokenizer(config.synthetic_vocab)
  marian_dir = os.path.join(workdir, tokenizer_lib.MARIAN_DIR)
  if storage.isdir(marian_dir):  # A model imported by `python -m transformer.convert`.
    tokenizer = tokenizer_lib.MarianTokenizer.load(marian_dir)
    if tokenizer.vocab_size != config.vocab_size:
      raise ValueError(f"{marian_dir} has vocab_size={tokenizer.vocab_size} but the config asks "
                       f"for {config.vocab_size}; use the imported workdir's config.json.")
    return tokenizer
  path = os.path.join(workdir, TOKENIZER_FILE)
  if storage.exists(path):
    tokenizer = tokenizer_lib.SentencePieceTokenizer.load(path)
    if tokenizer.vocab_size != config.vocab_size:
      raise ValueError(f"{path} has vocab_size={tokenizer.vocab_size} but the config asks for "
                       f"{config.vocab_size}; use a new workdir or the stored size.")
    return tokenizer
  examples = sources.load_examples(config, "train", monolingual=layout.monolingual)

  def texts() -> Iterator[str]:
    for start in range(0, len(examples), _CHUNK):
      for example in examples.get(range(start, min(start + _CHUNK, len(examples)))):
        yield from example

  logging.info("Training a %d-piece SentencePiece model on %d examples of %s.", config.vocab_size,
               len(examples), config.dataset)
  return tokenizer_lib.train_sentencepiece(texts(), path, config.vocab_size, seed=config.seed)


def _encode_side(tokenizer: tokenizer_lib.Tokenizer, texts: list[str], side: int) -> list:
  """Ids of texts of one side: 0 is the source, 1 the target (its own model for Marian)."""
  return tokenizer.encode_target_batch(texts) if side == 1 else tokenizer.encode_batch(texts)


def _encode(tokenizer: tokenizer_lib.Tokenizer, examples: list[tuple[str, ...]],
            max_len: int) -> list[tuple[np.ndarray, ...]]:
  """Ids of each side + EOS, truncated to max_len (EOS kept last)."""
  sides = [_encode_side(tokenizer, [e[s] for e in examples], s) for s in range(len(examples[0]))]
  return [tuple(np.array(ids[:max_len - 1] + [tokenizer.eos_id], np.int32) for ids in ex)
          for ex in zip(*sides)]


def _lengths(examples: sources.Examples, tokenizer: tokenizer_lib.Tokenizer) -> np.ndarray:
  """(N, sides) token counts of every example, EOS included."""
  out = np.zeros((len(examples), examples.num_sides), np.int32)
  for start in range(0, len(examples), _CHUNK):
    chunk = examples.get(range(start, min(start + _CHUNK, len(examples))))
    for s in range(examples.num_sides):
      ids = _encode_side(tokenizer, [e[s] for e in chunk], s)
      out[start:start + len(chunk), s] = [len(x) + 1 for x in ids]
  return out


def _cached_lengths(examples: sources.Examples, tokenizer: tokenizer_lib.Tokenizer,
                    cache_dir: str | os.PathLike | None, key: tuple) -> np.ndarray:
  """`_lengths`, stored in cache_dir under a key of everything they depend on."""
  if cache_dir is None:
    return _lengths(examples, tokenizer)
  probe = [i for i in range(min(16, len(examples)))] + list(range(max(0, len(examples) - 16),
                                                                  len(examples)))
  digest = hashlib.sha256(json.dumps(
    [list(key), tokenizer.fingerprint(), len(examples), examples.get(probe)]).encode())
  path = os.path.join(os.fspath(cache_dir), f"lengths-{digest.hexdigest()[:20]}.npy")
  if storage.exists(path):
    return np.load(io.BytesIO(storage.read_bytes(path)))
  lengths = _lengths(examples, tokenizer)
  buffer = io.BytesIO()
  np.save(buffer, lengths)
  storage.write_atomic(path, buffer.getvalue())  # Another process may read it at the same time.
  return lengths


def _mlm_sides(example: tuple[np.ndarray, ...], rng: np.random.Generator,
               config: config_lib.DataConfig, vocab_size: int) -> tuple[np.ndarray, ...]:
  """(original, corrupted, weights as int) of a masked-LM example."""
  corrupted, weights = masking.mask_tokens(example[0], rng, config.mask_rate, vocab_size)
  return example[0], corrupted, weights.astype(np.int32)


def _num_shards(num_data_shards: int | None, process_index: int, process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  shards = process_count if num_data_shards is None else num_data_shards
  if shards < 1 or shards % process_count:
    raise ValueError(f"num_data_shards={shards} must be a positive multiple of "
                     f"process_count={process_count}.")
  return shards


def train_batch_shapes(config: config_lib.DataConfig, *,
                       num_data_shards: int = 1) -> list[tuple[int, int]]:
  """Global (rows B, length L) of every training batch shape (S = T = L for translation).

  Per-process batches have B / process_count rows. With packing there is one shape.
  """
  if config.packing:
    return [batching.packed_shape(config.max_len, config.tokens_per_batch, num_data_shards)]
  return batching.bucket_shapes(config.max_len, config.tokens_per_batch, num_data_shards)


class _TrainBatches:
  """Global batch index -> this process's batch; the whole pipeline after the plan.

  Picklable (grain worker processes get a copy); plans are recomputed from the seed.
  """

  def __init__(self, config, layout, examples, tokenizer, lengths, kept, shapes, process_index,
               process_count):
    self._config = config
    self._layout = layout
    self._examples = examples
    self._tokenizer = tokenizer
    self._lengths = lengths
    self._kept = kept
    self.shapes = shapes
    self._process_index = process_index
    self._process_count = process_count
    self._buckets = batching.assign_buckets(lengths, shapes)
    self._per_epoch = batching.count_bucket_batches(kept, self._buckets, shapes)
    self._init_caches()

  def _init_caches(self):
    self._lock = threading.Lock()
    self._plans = {}  # epoch -> list of batches; the last two epochs only.
    self._epoch_ends = []  # Cumulative batch counts of epochs 0, 1, ...

  def __getstate__(self):
    state = dict(self.__dict__)
    for key in ("_lock", "_plans", "_epoch_ends"):
      del state[key]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_caches()

  def _plan(self, epoch: int) -> list[batching.Batch]:
    if epoch not in self._plans:
      if self._config.packing:
        plan = batching.plan_packing(self._kept, self._lengths, self.shapes[0],
                                     self._config.seed, epoch)
      else:
        plan = batching.plan_buckets(self._kept, self._buckets, self.shapes, self._config.seed,
                                     epoch)
      self._plans = {e: p for e, p in self._plans.items() if e == epoch - 1}
      self._plans[epoch] = plan
    return self._plans[epoch]

  def batches_per_epoch(self, epoch: int) -> int:
    """Global batches of `epoch` (the same for every epoch without packing)."""
    if not self._config.packing:
      return self._per_epoch
    with self._lock:
      return len(self._plan(epoch))

  def _locate(self, index: int) -> tuple[int, int]:
    if not self._config.packing:
      return index // self._per_epoch, index % self._per_epoch
    while not self._epoch_ends or self._epoch_ends[-1] <= index:
      previous = self._epoch_ends[-1] if self._epoch_ends else 0
      self._epoch_ends.append(previous + len(self._plan(len(self._epoch_ends))))
    epoch = int(np.searchsorted(self._epoch_ends, index, side="right"))
    return epoch, index - (self._epoch_ends[epoch - 1] if epoch else 0)

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    with self._lock:
      epoch, position = self._locate(index)
      batch = self._plan(epoch)[position]
    rows, length = self.shapes[batch.shape]
    local_rows = rows // self._process_count
    start = self._process_index * local_rows
    ids, row_sizes = batch.rows_slice(start, start + local_rows)
    examples = _encode(self._tokenizer, self._examples.get(ids), self._config.max_len) if len(
      ids) else []
    if self._layout.masked:
      examples = [
        _mlm_sides(e, np.random.default_rng([self._config.seed, epoch, int(i)]), self._config,
                   self._tokenizer.vocab_size) for e, i in zip(examples, ids)]
    offsets = np.concatenate([[0], np.cumsum(row_sizes)])
    grouped = [examples[offsets[r]:offsets[r + 1]] for r in range(local_rows)]
    return self._layout.name_arrays(
        *batching.assemble(grouped, local_rows, length, self._layout.num_sides))


def _prepare(config, tokenizer, split, layout, *, training, cache_dir=None):
  """Examples of a split, their lengths, which are kept, and statistics."""
  examples = sources.load_examples(config, split, monolingual=layout.monolingual)
  key = (config.dataset, config.source_lang, config.target_lang, split, layout.monolingual)
  lengths = _cached_lengths(examples, tokenizer, cache_dir, key)
  too_long = np.any(lengths > config.max_len, axis=1)
  truncate = config.overlong == "truncate" or not training
  empty = np.any(lengths <= 1, axis=1) if training else np.zeros(len(examples), bool)
  kept = ~empty & (~too_long | truncate)
  stats = ExampleStats(num_examples=len(examples), num_kept=int(kept.sum()),
                       num_too_long=int(too_long.sum()), num_empty=int(empty.sum()),
                       truncated=truncate, skipped_lines=dict(examples.skipped))
  logging.info("%s %s split: %d examples, %d kept; %d longer than max_len=%d (%s), %d empty "
               "dropped; lines skipped by the source: %s.", config.dataset, split,
               stats.num_examples, stats.num_kept, stats.num_too_long, config.max_len,
               "truncated" if truncate else "dropped", stats.num_empty,
               stats.skipped_lines or "none")
  if not stats.num_kept:
    raise ValueError(f"No {split} example of {config.dataset!r} fits max_len={config.max_len}.")
  return examples, np.minimum(lengths, config.max_len), kept, stats


def _train_batches(config, tokenizer, layout, process_index, process_count, num_data_shards,
                   cache_dir=None) -> _TrainBatches:
  _check_layout(layout)
  shards = _num_shards(num_data_shards, process_index, process_count)
  shapes = train_batch_shapes(config, num_data_shards=shards)
  examples, lengths, kept, _ = _prepare(config, tokenizer, "train", layout, training=True,
                                        cache_dir=cache_dir)
  return _TrainBatches(config, layout, examples, tokenizer, lengths, kept, shapes, process_index,
                       process_count)


def make_train_iterator(config: config_lib.DataConfig, tokenizer: tokenizer_lib.Tokenizer, *,
                        layout: layouts.BatchLayout = layouts.PAIRS, process_index: int = 0,
                        process_count: int = 1,
                        num_data_shards: int | None = None,
                        cache_dir: str | os.PathLike | None = None) -> grain.DatasetIterator:
  """The endless, checkpointable iterator of this process's training batches.

  Epochs repeat with a new seeded shuffle each. Every example kept in an epoch appears exactly
  once in it across all processes. Batch shapes are those of `train_batch_shapes`, divided by
  process_count in rows.

  Args:
    config: the data config.
    tokenizer: from `get_tokenizer`.
    layout: which sides make which batch keys (a Task's `layout`; default parallel pairs).
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    num_data_shards: global batch rows are a multiple of this (data-parallel devices); default
      process_count.
    cache_dir: where to keep the token lengths of the training split (e.g. the workdir): every
      process needs them all to plan identical global batches, and measuring them means reading
      and tokenizing the whole split (minutes for WMT), so resumed runs reuse them.

  Returns:
    A grain iterator of dicts of int32 (B/process_count, L) arrays (float32 `weights`), with
    `get_state()` / `set_state(state)` (JSON-serializable) for exact resumption.
  """
  load = _train_batches(config, tokenizer, layout, process_index, process_count, num_data_shards,
                        cache_dir)
  logging.info("Training batches: %d in epoch 0, global shapes (rows, length) %s.",
               load.batches_per_epoch(0), load.shapes)
  dataset = grain.MapDataset.range(sys.maxsize).map(load).to_iter_dataset(
    grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_batches))
  if config.num_workers:
    # grain 0.2.18 reads one of its absl flags in mp_prefetch even when the program never parsed
    # flags (a notebook, a plain script): google/grain#1355. Defaults are what we want then.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return iter(dataset)


def make_eval_dataset(config: config_lib.DataConfig, tokenizer: tokenizer_lib.Tokenizer,
                      split: str, *, layout: layouts.BatchLayout = layouts.PAIRS,
                      process_index: int = 0,
                      process_count: int = 1, num_data_shards: int | None = None) -> EvalDataset:
  """Every example of `split`, in order, in batches of one shape (eval_batch_size, max_len).

  No shuffling and no dropping: the last batch is padded with empty rows; overlong examples are
  truncated (and counted). Masked-LM corruption is seeded per example, so it is the same each
  evaluation.

  Args:
    config: the data config.
    tokenizer: from `get_tokenizer`.
    split: "validation" or "test" (or "train").
    layout: which sides make which batch keys (default parallel pairs).
    process_index: this process.
    process_count: number of processes.
    num_data_shards: the global batch size is rounded up to a multiple of this.

  Returns:
    The split's batches (this process's rows) with sources and references for BLEU.
  """
  _check_layout(layout)
  shards = _num_shards(num_data_shards, process_index, process_count)
  rows = -(-config.eval_batch_size // shards) * shards
  local_rows = rows // process_count
  examples, _, _, stats = _prepare(config, tokenizer, split, layout, training=False)
  texts = examples.get(range(len(examples)))
  batches, indices = [], []
  for start in range(0, len(texts), rows):
    ids = np.arange(start + process_index * local_rows,
                    min(start + (process_index + 1) * local_rows, len(texts)))
    encoded = _encode(tokenizer, [texts[i] for i in ids], config.max_len) if ids.size else []
    if layout.masked:
      encoded = [_mlm_sides(e, np.random.default_rng([config.seed, int(i)]), config,
                            tokenizer.vocab_size) for e, i in zip(encoded, ids)]
    batch = batching.assemble([[e] for e in encoded], local_rows, config.max_len,
                              layout.num_sides)
    batches.append(layout.name_arrays(*batch))
    index = np.full(local_rows, -1, np.int32)
    index[:ids.size] = ids
    indices.append(index)
  return EvalDataset(batches=batches, indices=indices, sources=[t[0] for t in texts],
                     references=[t[-1] for t in texts], stats=stats)
