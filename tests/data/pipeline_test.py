"""Training batches: token budget, padding, packing segments, exactly-once epochs, exact resume."""

import collections
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from transformer import data
from transformer.data import pipeline
from transformer.data import sources
from transformer.data import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _synthetic_config(**overrides):
  fields = dict(dataset="synthetic/reverse", synthetic_length=12, synthetic_vocab=20, max_len=16,
                tokens_per_batch=512, seed=3)
  fields.update(overrides)
  return data.DataConfig(**fields)


def _segments(batch, prefix):
  """Per row, per segment: the token ids of that segment; checks the layout on the way."""
  tokens = batch[prefix]
  segmentation = batch[f"{prefix}_segmentation"]
  positions = batch[f"{prefix}_position"]
  rows = []
  for r in range(tokens.shape[0]):
    seg = segmentation[r]
    assert np.all(tokens[r][seg == 0] == 0) and np.all(positions[r][seg == 0] == 0)
    used = int(np.sum(seg > 0))
    assert np.all(seg[:used] > 0), "padding only at the end of a row"
    assert np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1)
    segments = []
    for k in range(1, int(seg.max(initial=0)) + 1):
      ids = tokens[r][seg == k]
      assert positions[r][seg == k].tolist() == list(range(ids.size))
      assert ids[-1] == tokenizer_lib.EOS_ID and np.all(ids[:-1] >= tokenizer_lib.NUM_SPECIAL)
      segments.append(tuple(ids.tolist()))
    rows.append(segments)
  return rows


def _translation_examples(batch):
  inputs, targets = _segments(batch, "inputs"), _segments(batch, "targets")
  out = []
  for row_in, row_tgt in zip(inputs, targets):
    assert len(row_in) == len(row_tgt)
    out.extend(zip(row_in, row_tgt))
  return out


def _expected_examples(config, tokenizer):
  examples = sources.load_examples(config, "train").get(range(sources.SYNTHETIC_SPLIT_SIZES[
    "train"]))
  encoded = pipeline._encode(tokenizer, examples, config.max_len)
  return collections.Counter((tuple(s.tolist()), tuple(t.tolist())) for s, t in encoded)


def _epoch(config, tokenizer, process_count, num_data_shards, epoch=0):
  """All examples of `epoch` across processes; checks shapes against the token budget."""
  shapes = set(data.train_batch_shapes(config, num_data_shards=num_data_shards))
  seen = collections.Counter()
  for p in range(process_count):
    loader = pipeline._train_batches(config, tokenizer, data.PAIRS, p, process_count,
                                     num_data_shards)
    it = data.make_train_iterator(config, tokenizer, process_index=p,
                                  process_count=process_count, num_data_shards=num_data_shards)
    start = sum(loader.batches_per_epoch(e) for e in range(epoch))
    it.set_state({"next_index": start})
    for _ in range(loader.batches_per_epoch(epoch)):
      batch = next(it)
      rows, length = batch["inputs"].shape
      assert batch["targets"].shape == (rows, length)
      assert all(v.dtype == np.int32 for v in batch.values())
      assert (rows * process_count, length) in shapes
      assert rows * process_count * length <= config.tokens_per_batch
      assert (rows * process_count) % num_data_shards == 0
      seen.update(_translation_examples(batch))
  return seen


@pytest.mark.parametrize("packing", [False, True])
def test_every_example_once_per_epoch_across_processes(packing):
  config = _synthetic_config(packing=packing)
  tokenizer = data.get_tokenizer(config, "/unused")
  expected = _expected_examples(config, tokenizer)
  assert _epoch(config, tokenizer, process_count=2, num_data_shards=4) == expected


def test_second_epoch_is_reshuffled_and_complete():
  config = _synthetic_config(tokens_per_batch=1024)
  tokenizer = data.get_tokenizer(config, "/unused")
  assert _epoch(config, tokenizer, 1, 1, epoch=1) == _expected_examples(config, tokenizer)
  first, second = [], []
  for epoch, out in ((0, first), (1, second)):
    it = data.make_train_iterator(config, tokenizer)
    loader = pipeline._train_batches(config, tokenizer, data.PAIRS, 0, 1, None)
    it.set_state({"next_index": epoch * loader.batches_per_epoch(0)})
    out.append(next(it)["inputs"])
  assert not np.array_equal(first[0], second[0])


def test_packing_fills_rows():
  config = _synthetic_config(packing=True, synthetic_length=6, tokens_per_batch=256)
  tokenizer = data.get_tokenizer(config, "/unused")
  batch = next(data.make_train_iterator(config, tokenizer))
  assert batch["inputs"].shape == (16, 16)
  assert batch["inputs_segmentation"].max() >= 3
  assert np.mean(batch["inputs_segmentation"] > 0) > 0.7


def test_multi30k_batches_respect_budget_and_decode(multi30k_config, multi30k_tokenizer):
  it = data.make_train_iterator(multi30k_config, multi30k_tokenizer, process_count=1,
                                num_data_shards=8)
  shapes = data.train_batch_shapes(multi30k_config, num_data_shards=8)
  assert len(shapes) <= 8 and all(r % 8 == 0 and r * n <= 2048 for r, n in shapes)
  train = sources.load_examples(multi30k_config, "train")
  texts = {pair for pair in train.get(range(len(train)))}
  for _ in range(5):
    batch = next(it)
    assert (batch["inputs"].shape[0], batch["inputs"].shape[1]) in shapes
    for source, target in _translation_examples(batch)[:4]:
      pair = (multi30k_tokenizer.decode(source), multi30k_tokenizer.decode(target))
      assert pair in texts


def _digest(batch):
  h = hashlib.sha256()
  for key in sorted(batch):
    h.update(key.encode())
    h.update(np.ascontiguousarray(batch[key]).tobytes())
  return h.hexdigest()


_RESUME_SCRIPT = """
import json
import numpy as np
from transformer import data
config = data.DataConfig(**json.loads({config!r}))
tokenizer = data.get_tokenizer(config, {workdir!r})
it = data.make_train_iterator(config, tokenizer, process_index=1, process_count=2)
it.set_state(json.loads({state!r}))
batches = [next(it) for _ in range(4)]
np.savez({out!r}, **{{f"{{i}}/{{k}}": v for i, b in enumerate(batches) for k, v in b.items()}})
"""


def test_resume_in_fresh_process_gives_identical_batches(multi30k_config, multi30k_tokenizer,
                                                         multi30k_workdir, tmp_path):
  it = data.make_train_iterator(multi30k_config, multi30k_tokenizer, process_index=1,
                                process_count=2)
  for _ in range(7):
    next(it)
  state = json.dumps(it.get_state())
  expected = [next(it) for _ in range(4)]
  out = str(tmp_path / "resumed.npz")
  script = _RESUME_SCRIPT.format(config=json.dumps(multi30k_config.__dict__),
                                 workdir=str(multi30k_workdir), state=state, out=out)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = np.load(out)
  assert len(resumed.files) == sum(len(b) for b in expected)
  for i, batch in enumerate(expected):
    for key, value in batch.items():
      np.testing.assert_array_equal(resumed[f"{i}/{key}"], value, err_msg=f"batch {i} {key}")


@pytest.mark.parametrize("packing", [False, True])
def test_resume_across_epoch_boundary(tmp_path, packing):
  lines = [" ".join(str((i * 7 + j) % 10) for j in range(1 + i % 9)) for i in range(40)]
  path = tmp_path / "train.tsv"
  path.write_text("".join(f"{s}\t{s[::-1]}\n" for s in lines), encoding="utf-8")
  config = data.DataConfig(dataset=f"tsv:{path}", max_len=16, tokens_per_batch=64,
                           packing=packing, seed=5)
  tokenizer = tokenizer_lib.SyntheticTokenizer(10)
  it = data.make_train_iterator(config, tokenizer)
  uninterrupted = [_digest(next(it)) for _ in range(30)]
  for cut in (3, 11, 17):
    it = data.make_train_iterator(config, tokenizer)
    for _ in range(cut):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = data.make_train_iterator(config, tokenizer)
    resumed.set_state(state)
    assert [_digest(next(resumed)) for _ in range(30 - cut)] == uninterrupted[cut:]


def test_eval_dataset_holds_every_example_once_in_order(multi30k_config, multi30k_tokenizer):
  config = data.DataConfig(**{**multi30k_config.__dict__, "eval_batch_size": 60})
  seen = {}
  for p in range(2):
    ev = data.make_eval_dataset(config, multi30k_tokenizer, "test", process_index=p,
                                process_count=2, num_data_shards=8)
    assert len(ev.sources) == len(ev.references) == 1000
    assert len(ev.batches) == len(ev.indices) == 16  # 64 rows per global batch.
    for batch, index in zip(ev.batches, ev.indices):
      assert batch["inputs"].shape == (32, config.max_len)
      assert np.all((batch["inputs_segmentation"].max(axis=1) == 0) == (index == -1))
      for row, i in enumerate(index):
        if i >= 0:
          assert i not in seen
          seen[i] = multi30k_tokenizer.decode(batch["targets"][row])
  assert sorted(seen) == list(range(1000))
  assert sum(seen[i] == ev.references[i] for i in range(1000)) >= 995  # A few are truncated.
  test_pairs = sources.load_examples(config, "test").get(range(1000))
  assert ev.sources == [s for s, _ in test_pairs] and ev.references == [t for _, t in test_pairs]


def test_language_model_batches():
  config = _synthetic_config(packing=True)
  tokenizer = data.get_tokenizer(config, "/unused", layout=data.TEXT)
  batch = next(data.make_train_iterator(config, tokenizer, layout=data.TEXT))
  assert sorted(batch) == ["targets", "targets_position", "targets_segmentation"]
  assert batch["targets"].shape == (32, 16)
  _segments(batch, "targets")
  ev = data.make_eval_dataset(config, tokenizer, "validation", layout=data.TEXT)
  assert ev.sources == ev.references and len(ev.sources) == 500


def test_masked_lm_batches():
  config = _synthetic_config(synthetic_length=15, max_len=16)
  tokenizer = data.get_tokenizer(config, "/unused", layout=data.MASKED_TEXT)
  batch = next(data.make_train_iterator(config, tokenizer, layout=data.MASKED_TEXT))
  assert sorted(batch) == ["inputs", "inputs_position", "inputs_segmentation", "targets",
                           "weights"]
  assert batch["weights"].dtype == np.float32
  real = batch["inputs_segmentation"] > 0
  ordinary = batch["targets"] >= tokenizer_lib.NUM_SPECIAL
  assert np.all(batch["weights"][~ordinary] == 0)
  assert np.all(batch["inputs"][batch["weights"] == 0] == batch["targets"][batch["weights"] == 0])
  assert np.all(np.sum(batch["weights"], axis=1)[real.any(axis=1)] >= 1)
  assert 0.1 < batch["weights"].sum() / ordinary.sum() < 0.2
  # The same example is corrupted the same way on every evaluation.
  a = data.make_eval_dataset(config, tokenizer, "test", layout=data.MASKED_TEXT).batches[0]
  b = data.make_eval_dataset(config, tokenizer, "test", layout=data.MASKED_TEXT).batches[0]
  assert all(np.array_equal(a[k], b[k]) for k in a)


def test_overlong_examples_are_dropped_or_truncated_and_counted(tmp_path, caplog):
  path = tmp_path / "train.tsv"
  path.write_text("1 2\t3 4\n" + "1 " * 20 + "\t5\n" + "6\t7\n", encoding="utf-8")
  tokenizer = tokenizer_lib.SyntheticTokenizer(10)
  config = data.DataConfig(dataset=f"tsv:{path}", max_len=8, tokens_per_batch=64)
  with caplog.at_level("INFO"):
    _, _, kept, stats = pipeline._prepare(config, tokenizer, "train", data.PAIRS,
                                          training=True)
  assert (stats.num_examples, stats.num_kept, stats.num_too_long) == (3, 2, 1)
  assert kept.tolist() == [True, False, True]
  assert "1 longer than max_len=8 (dropped)" in caplog.text
  config = data.DataConfig(**{**config.__dict__, "overlong": "truncate"})
  _, _, kept, stats = pipeline._prepare(config, tokenizer, "train", data.PAIRS, training=True)
  assert stats.num_kept == 3 and stats.truncated
  seen = [e for _ in range(1) for e in _translation_examples(next(
    data.make_train_iterator(config, tokenizer)))]
  assert max(len(s) for s, _ in seen) == 8


def test_worker_processes_give_the_same_batches_and_resume():
  config = _synthetic_config(num_workers=1)
  tokenizer = data.get_tokenizer(config, "/unused")
  threads_only = data.make_train_iterator(
    data.DataConfig(**{**config.__dict__, "num_workers": 0}), tokenizer)
  expected = [_digest(next(threads_only)) for _ in range(6)]
  it = data.make_train_iterator(config, tokenizer)
  assert [_digest(next(it)) for _ in range(3)] == expected[:3]
  state = json.loads(json.dumps(it.get_state()))
  resumed = data.make_train_iterator(config, tokenizer)
  resumed.set_state(state)
  assert [_digest(next(resumed)) for _ in range(3)] == expected[3:]


def test_lengths_are_cached(tmp_path, monkeypatch):
  config = _synthetic_config()
  tokenizer = data.get_tokenizer(config, "/unused")
  it = data.make_train_iterator(config, tokenizer, cache_dir=tmp_path)
  expected = [_digest(next(it)) for _ in range(3)]
  assert len(list(tmp_path.glob("lengths-*.npy"))) == 1

  def fail(*args):
    raise AssertionError("lengths recomputed")

  monkeypatch.setattr(pipeline, "_lengths", fail)
  it = data.make_train_iterator(config, tokenizer, cache_dir=tmp_path)
  assert [_digest(next(it)) for _ in range(3)] == expected
  other = data.DataConfig(**{**config.__dict__, "dataset": "synthetic/copy"})
  with pytest.raises(AssertionError, match="lengths recomputed"):
    data.make_train_iterator(other, tokenizer, cache_dir=tmp_path)
