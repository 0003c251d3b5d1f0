"""The ecosystem mode of bench/decode.py on a tiny trained copy-task run: our Translator rows
(greedy, beam with the exact rule), the no-cache row with the same outputs, and the table."""

import os
import sys

import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "training"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench"))

import decode  # pylint: disable=g-import-not-at-top,wrong-import-position
import training_helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

from transformer import model as model_lib  # pylint: disable=wrong-import-position
from transformer.training import loop  # pylint: disable=wrong-import-position

# Digits are the synthetic tokenizer's words; the empty line is not decoded (it stays "").
SENTENCES = ["3 1 4 1 5", "9 2 6 5 3 5 8 9 7 9", "", "2 7", "1 8 2 8 1 8"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  # After 20 steps the model emits EOS first (every output ""); 60 steps with a 30-step warm-up
  # give non-empty outputs to compare, and one checkpoint at the end keeps it as fast.
  config = training_helpers.tiny_copy_config(num_train_steps=60)
  config.optimizer.warmup_steps = 30
  config.training.checkpoint_every_steps = 60
  path = str(tmp_path_factory.mktemp("copy") / "run")
  loop.train_and_evaluate(config, path)
  return path


def _row(workdir, method, impl):
  # One timed pass after the first call; batch 8 = the 8 test devices, so one batch, one width.
  return decode.ecosystem_row(method, impl, SENTENCES, workdir=workdir, export_dir=None,
                              batch_size=8, beam_size=2, repeats=1)


def test_our_rows_and_the_no_cache_row_decode_the_same_sentences(workdir):
  results = {("greedy", "ours"): _row(workdir, "greedy", "ours"),
             ("greedy", "ours_nocache"): _row(workdir, "greedy", "ours_nocache"),
             ("beam", "ours_beam_exact"): _row(workdir, "beam", "ours_beam_exact")}
  for r in results.values():
    assert r["first_s"] > 0 and r["seconds"] > 0 and r["sentences"] == len(SENTENCES), r
    assert len(r["outputs"]) == len(SENTENCES) and r["outputs"][2] == "", r["outputs"]
    # One source width: one program, compiled in the first call and reused by the timed pass.
    assert r["compilations"] == 1, r
  cached, nocache = results["greedy", "ours"], results["greedy", "ours_nocache"]
  assert nocache["outputs"] == cached["outputs"]
  assert any(cached["outputs"]), cached["outputs"]

  for r in results.values():
    r.update(load_before=0.5, load_after=0.5, loaded=False)
  lines = decode.ecosystem_table(results, ["greedy", "beam"], beam_size=2, repeats=1)
  rows = {tuple(line.split()[:2]): line.split() for line in lines[2:-2]}
  assert set(rows) == set(results), lines
  assert rows["greedy", "ours_nocache"][7] == f"{len(SENTENCES)}/{len(SENTENCES)}", lines
  assert rows["beam", "ours_beam_exact"][2] == "exact", lines
  assert lines[-2].startswith("ratio of our sentences/s (greedy): ours: "), lines
  assert lines[-2].endswith("x ours_nocache"), lines
  assert lines[-1] == ("ratio of our sentences/s (beam 2): ours_beam_exact: no other row "
                       "measured"), lines


def test_a_row_of_the_wrong_method_is_refused():
  with pytest.raises(ValueError, match="'ours' is not a beam row"):
    decode.ecosystem_row("beam", "ours", SENTENCES, workdir="unused", export_dir=None,
                         batch_size=8, beam_size=2, repeats=1)


def test_no_cache_beam_search_equals_cached_with_the_heuristic_rule():
  """make_program's cached and no-cache programs on random weights (the random mode's check)."""
  config = model_lib.TransformerConfig.tiny(vocab_size=32, num_encoder_layers=1,
                                            num_decoder_layers=1)
  graphdef, params = nnx.split(model_lib.EncoderDecoder(config, rngs=nnx.Rngs(params=0)),
                               nnx.Param)
  inputs = np.random.default_rng(0).integers(5, 32, (4, 8)).astype(np.int32)
  inputs[1, 5:] = config.pad_id  # (B, S) with one padded row.
  outputs = {impl: decode.make_program(graphdef, "beam", impl, 6, 3, alpha=0.6,
                                       early_stopping="heuristic")((params,), inputs)
             for impl in ("cached", "no-cache")}
  np.testing.assert_array_equal(outputs["cached"][0], outputs["no-cache"][0])
  np.testing.assert_allclose(outputs["cached"][1], outputs["no-cache"][1], rtol=1e-5, atol=1e-5)
