"""Throughput of the whole input pipeline (read, tokenize, bucket or pack, batch) on Multi30k.

  python bench/data_pipeline.py --manual_dir=../shared/data/multi30k --num_batches=300

(from the repository root, with the package installed or PYTHONPATH=.).

Prints examples/s and tokens/s (real source + target tokens, padding excluded) of the training
iterator, after a warm-up batch; preparing the dataset and training the tokenizer happen first
and are timed separately. It waits for the 1-minute load average to fall to `--max_load` first
and prints the load before and after (LOADED when it was above that at the start).
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

import common
from transformer import data

_MANUAL_DIR = flags.DEFINE_string("manual_dir", "../shared/data/multi30k", "Raw Multi30k files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir (default: a temporary one).")
_TOKENS = flags.DEFINE_integer("tokens_per_batch", 25_000, "Tokens per side per batch.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 300, "Batches to time.")
_PACKING = flags.DEFINE_bool("packing", False, "Pack examples instead of length buckets.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 2, "Loader threads.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 0, "grain worker processes.")
_MAX_LOAD = flags.DEFINE_float("max_load", 1.5, "Highest 1-minute load average to start at.")
_LOAD_WAIT = flags.DEFINE_integer("load_wait", 180, "Seconds to wait for the load to fall.")


def main(argv):
  del argv
  # One implementation, one process; the load says whether the figure was measured alone.
  load_before = common.wait_for_quiet(_MAX_LOAD.value, _LOAD_WAIT.value)
  with tempfile.TemporaryDirectory() as tmp:
    config = data.DataConfig(dataset="multi30k", manual_dir=_MANUAL_DIR.value,
                             data_dir=_DATA_DIR.value or f"{tmp}/tfds",
                             tokens_per_batch=_TOKENS.value, packing=_PACKING.value,
                             num_threads=_NUM_THREADS.value, num_workers=_NUM_WORKERS.value)
    start = time.perf_counter()
    data.sources.load_examples(config, "train")
    prepared = time.perf_counter()
    tokenizer = data.get_tokenizer(config, f"{tmp}/workdir")
    trained = time.perf_counter()
    it = data.make_train_iterator(config, tokenizer)
    next(it)  # Warm-up: thread start and the first plan.
    built = time.perf_counter()
    examples = tokens = padded = 0
    for _ in range(_NUM_BATCHES.value):
      batch = next(it)
      segmentation = batch["inputs_segmentation"]
      examples += int(np.sum(segmentation.max(axis=1)))
      tokens += int(np.sum(segmentation > 0) + np.sum(batch["targets_segmentation"] > 0))
      padded += 2 * segmentation.size
    elapsed = time.perf_counter() - built
  print(f"prepare multi30k (array_record): {prepared - start:.1f} s; "
        f"sentencepiece {config.vocab_size}: {trained - prepared:.1f} s; "
        f"iterator start: {built - trained:.1f} s")
  print(f"{_NUM_BATCHES.value} batches (tokens_per_batch={config.tokens_per_batch}, "
        f"packing={config.packing}, threads={config.num_threads}, workers={config.num_workers}): "
        f"{elapsed:.2f} s")
  print(f"examples/s: {examples / elapsed:,.0f}   tokens/s (src+tgt, no padding): "
        f"{tokens / elapsed:,.0f}   padding: {1 - tokens / padded:.1%}")
  load_after = os.getloadavg()[0]
  loaded = load_before > _MAX_LOAD.value
  print(f"load average {load_before:.2f} -> {load_after:.2f}"
        + (f"  LOADED: above {_MAX_LOAD.value} at the start, not a speed figure" if loaded else ""))


if __name__ == "__main__":
  app.run(main)
