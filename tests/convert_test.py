"""Marian import and export (transformer.convert) against transformers and CTranslate2, offline.

Small random Marian models are built here with transformers (SentencePiece models trained on a
few hundred Multi30k sentences), imported and compared with `MarianMTModel`: logits to 1e-5,
greedy and beam-4 outputs token for token; a run of ours is exported and compared the same way,
and through CTranslate2.
"""

import gzip
import io
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers
from flax import nnx
from safetensors import numpy as safetensors_numpy

from transformer import checkpointing
from transformer import convert
from transformer import decoding
from transformer.data import tokenizer as tokenizer_lib
from transformer.training import inference
from transformer.training import resume

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K = os.path.join(REPO, "..", "shared", "data", "multi30k")
CONFIG = os.path.join(REPO, "configs", "default.py")
NUM_SENTENCES = 400
MAX_LEN = 24  # Decoding limit L (tokens after the start token).


def _read(name: str) -> list[str]:
  with gzip.open(os.path.join(MULTI30K, name), "rt", encoding="utf-8") as f:
    return [next(f).strip() for _ in range(NUM_SENTENCES)]


@pytest.fixture(scope="module")
def corpus():
  return {"de": _read("train.de.gz"), "en": _read("train.en.gz")}


def _train_spm(texts: list[str], vocab_size: int) -> bytes:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model,
                                 vocab_size=vocab_size, model_type="unigram", minloglevel=2,
                                 num_threads=1)
  return model.getvalue()


def _marian_vocab(proto: bytes) -> dict[str, int]:
  """The opus-mt layout: </s> 0, <unk> 1, the pieces, <pad> last."""
  sp = spm.SentencePieceProcessor(model_proto=proto)
  pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
            if sp.id_to_piece(i) not in ("<unk>", "<s>", "</s>")]
  return {p: i for i, p in enumerate(["</s>", "<unk>"] + pieces + ["<pad>"])}


def _write_marian(directory, corpus, *, activation: str, shared: bool, seed: int) -> str:
  """A random MarianMTModel with its tokenizer, saved as `save_pretrained` does."""
  os.makedirs(directory)
  if shared:
    proto = _train_spm(corpus["de"] + corpus["en"], 220)
    protos = {"source.spm": proto, "target.spm": proto}
    vocabs = {"vocab.json": _marian_vocab(proto)}
  else:
    protos = {"source.spm": _train_spm(corpus["de"], 180),
              "target.spm": _train_spm(corpus["en"], 150)}
    vocabs = {"vocab.json": _marian_vocab(protos["source.spm"]),
              "target_vocab.json": _marian_vocab(protos["target.spm"])}
  for name, data in protos.items():
    with open(os.path.join(directory, name), "wb") as f:
      f.write(data)
  for name, vocab in vocabs.items():
    with open(os.path.join(directory, name), "w") as f:
      json.dump(vocab, f)
  source_size = len(vocabs["vocab.json"])
  target_size = len(vocabs.get("target_vocab.json", vocabs["vocab.json"]))
  pad = target_size - 1
  config = transformers.MarianConfig(
      vocab_size=source_size, decoder_vocab_size=target_size, d_model=32, encoder_layers=2,
      decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
      decoder_ffn_dim=64, activation_function=activation, max_position_embeddings=64,
      pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad, forced_eos_token_id=0,
      share_encoder_decoder_embeddings=shared, scale_embedding=True, init_std=0.1)
  torch.manual_seed(seed)
  model = transformers.MarianMTModel(config).eval()
  with torch.no_grad():
    model.final_logits_bias.normal_(0.0, 0.5)
  model.generation_config.bad_words_ids = [[pad]]
  model.generation_config.num_beams = 4
  model.save_pretrained(directory)
  tokenizer = transformers.MarianTokenizer(
      os.path.join(directory, "source.spm"), os.path.join(directory, "target.spm"),
      os.path.join(directory, "vocab.json"),
      target_vocab_file=None if shared else os.path.join(directory, "target_vocab.json"),
      separate_vocabs=not shared, source_lang="de", target_lang="en")
  tokenizer.save_pretrained(directory)
  return directory


def _hf_generate(model, tokenizer, sources, **kwargs):
  batch = tokenizer(sources, return_tensors="pt", padding=True)
  with torch.no_grad():
    out = model.generate(**batch, max_length=MAX_LEN + 1, do_sample=False,
                         bad_words_ids=[[model.config.pad_token_id]],
                         forced_eos_token_id=model.config.eos_token_id, **kwargs)
  return [_until_eos(row[1:], model.config.eos_token_id) for row in out.tolist()]


def _until_eos(ids, eos):
  ids = [int(i) for i in ids]
  return ids[:ids.index(eos) + 1] if eos in ids else ids


def _ours_generate(model, tokenizer, sources, target_map, **kwargs):
  encoded = [tokenizer.encode(s) + [tokenizer.eos_id] for s in sources]
  width = max(map(len, encoded))
  inputs = np.zeros((len(encoded), width), np.int32)
  for row, ids in enumerate(encoded):
    inputs[row, :len(ids)] = ids
  if kwargs.pop("beam", False):
    out, _ = nnx.jit(decoding.beam_search_translate, static_argnames=(
        "beam_size", "alpha", "max_decode_len", "forced_eos"))(
            model, jnp.asarray(inputs), beam_size=4, alpha=0.0, max_decode_len=MAX_LEN,
            forced_eos=True)
  else:
    out = nnx.jit(decoding.greedy_translate, static_argnames=("max_decode_len", "forced_eos"))(
        model, jnp.asarray(inputs), max_decode_len=MAX_LEN, forced_eos=True)
  return [[int(target_map[i]) for i in _until_eos(row, tokenizer.eos_id)]
          for row in np.asarray(out)]


def _logits_pair(model, tokenizer, hf_model, hf_tokenizer, sources, targets):
  """(ours (B, T, V_ours), transformers' (B, T, V), valid (B, T)) for teacher forcing."""
  batch = hf_tokenizer(sources, return_tensors="pt", padding=True)
  # Labels padded by hand: with separate vocabularies transformers' tokenizer pads them with the
  # source vocabulary's <pad>.
  pad = hf_model.config.pad_token_id
  rows = [hf_tokenizer(text_target=t)["input_ids"] for t in targets]
  labels = torch.tensor([r + [pad] * (max(map(len, rows)) - len(r)) for r in rows])
  decoder_inputs = transformers.models.marian.modeling_marian.shift_tokens_right(
      labels, pad, hf_model.config.decoder_start_token_id)
  with torch.no_grad():
    theirs = hf_model(**batch, decoder_input_ids=decoder_inputs).logits.numpy()
  source_ids = [tokenizer.encode(s) + [tokenizer.eos_id] for s in sources]
  target_ids = [tokenizer.encode_target_batch([t])[0] + [tokenizer.eos_id] for t in targets]
  inputs = np.zeros(batch["input_ids"].shape, np.int32)
  targets_ours = np.zeros(labels.shape, np.int32)
  for row, (s, t) in enumerate(zip(source_ids, target_ids)):
    inputs[row, :len(s)], targets_ours[row, :len(t)] = s, t
  forward = nnx.jit(lambda m, x, y: m(x, y))
  ours = np.asarray(forward(model, jnp.asarray(inputs),
                            decoding_inputs(targets_ours, tokenizer.bos_id)))
  return ours, theirs, targets_ours != 0, inputs, targets_ours, batch, labels


def decoding_inputs(targets: np.ndarray, bos_id: int) -> jax.Array:
  shifted = np.concatenate([np.full((targets.shape[0], 1), bos_id), targets[:, :-1]], axis=1)
  # Positions after the end are padding (as for transformers' attention over the labels).
  shifted[:, 1:][targets[:, :-1] == 0] = 0
  return jnp.asarray(shifted, jnp.int32)


def _single_device_model(run):
  """The run's model with its parameters on one device: decoding compiles faster than over the
  8-device test mesh."""
  return run.setup.model(jax.device_put(run.state, jax.devices()[0]))


SOURCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee neben einem Baum.",
           "Eine Frau singt."]
TARGETS = ["A man rides a bike.", "Two dogs play in the snow next to a tree.", "A woman sings."]


@pytest.fixture(scope="module", params=[("swish", True), ("relu", False)],
                ids=["swish-shared", "relu-separate"])
def imported(request, tmp_path_factory, corpus):
  activation, shared = request.param
  root = tmp_path_factory.mktemp(f"marian_{activation}")
  marian_dir = _write_marian(str(root / "hf"), corpus, activation=activation, shared=shared,
                             seed=1 if shared else 2)
  workdir = str(root / "run")
  convert.import_marian(marian_dir, workdir, config_path=CONFIG)
  run = inference.load_run(workdir)
  return dict(marian_dir=marian_dir, workdir=workdir, run=run, model=_single_device_model(run),
              hf_model=transformers.MarianMTModel.from_pretrained(marian_dir).eval(),
              hf_tokenizer=transformers.MarianTokenizer.from_pretrained(marian_dir))


def test_import_tokenizes_like_transformers(imported):
  tokenizer, hf_tokenizer = imported["run"].tokenizer, imported["hf_tokenizer"]
  source_map, target_map = tokenizer.source_id_map, tokenizer.target_id_map
  for text in SOURCES + ["Unbekannte Wörter: Ω≈ç √∫ !"]:
    ours = [int(source_map[i]) for i in tokenizer.encode(text)] + [int(source_map[3])]
    assert ours == hf_tokenizer(text)["input_ids"]
  for text in TARGETS:
    ours = [int(target_map[i]) for i in tokenizer.encode_target_batch([text])[0]]
    theirs = hf_tokenizer(text_target=text)["input_ids"][:-1]
    assert ours == theirs
    assert tokenizer.decode(tokenizer.encode_target_batch([text])[0]) == hf_tokenizer.decode(
        theirs, skip_special_tokens=True)


def test_import_logits_equal_transformers(imported):
  ours, theirs, valid, *_ = _logits_pair(imported["model"], imported["run"].tokenizer,
                                         imported["hf_model"], imported["hf_tokenizer"],
                                         SOURCES, TARGETS)
  target_map = imported["run"].tokenizer.target_id_map
  diff = np.abs(ours[valid] - theirs[..., target_map][valid]).max()
  assert diff < 1e-5, diff  # float32, eval mode; about 7e-7 measured.


@pytest.mark.parametrize("beam", [False, True], ids=["greedy", "beam4"])
def test_import_decodes_like_generate(imported, beam):
  run, hf_model = imported["run"], imported["hf_model"]
  ours = _ours_generate(imported["model"], run.tokenizer, SOURCES, run.tokenizer.target_id_map,
                        beam=beam)
  kwargs = dict(num_beams=4, length_penalty=0.0, early_stopping=False) if beam else dict(
      num_beams=1)
  theirs = _hf_generate(hf_model, imported["hf_tokenizer"], SOURCES, **kwargs)
  assert ours == theirs
  assert all(len(row) > 1 for row in ours)


def test_imported_workdir_config(imported):
  saved = checkpointing.read_config_json(imported["workdir"])
  assert saved["model"]["activation"] in ("silu", "relu")
  assert saved["model"]["output_bias"] and saved["model"]["layer_norm_epsilon"] == 1e-5
  assert saved["decoding"]["beam_size"] == 4
  assert saved["data"]["vocab_size"] == imported["run"].tokenizer.vocab_size


def test_import_refuses_bad_input(tmp_path, imported):
  with pytest.raises(convert.ConvertError, match="no config.json"):
    convert.import_marian(str(tmp_path), str(tmp_path / "out"), config_path=CONFIG)
  with pytest.raises(convert.ConvertError, match="refusing to overwrite"):
    convert.import_marian(imported["marian_dir"], imported["workdir"], config_path=CONFIG)
  bad = tmp_path / "pre_ln"
  bad.mkdir()
  config = json.load(open(os.path.join(imported["marian_dir"], "config.json")))
  for flag, value in (("normalize_before", True), ("normalize_embedding", True),
                      ("activation_function", "tanh"), ("model_type", "bart")):
    with open(bad / "config.json", "w") as f:
      json.dump(dict(config, **{flag: value}), f)
    with pytest.raises(convert.ConvertError, match=flag if flag != "model_type" else "bart"):
      convert.import_marian(str(bad), str(tmp_path / "out"), config_path=CONFIG)


def _our_run_config(vocab_size: int) -> dict:
  config = convert.load_config_file(CONFIG)
  config["model"].update(d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2,
                         num_decoder_layers=2, max_len=64, activation="gelu",
                         layer_norm_epsilon=1e-5)
  config["data"].update(vocab_size=vocab_size, max_len=32)
  config["training"].update(seed=3)
  return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory, corpus):
  """A run of ours (randomly initialized, its own SentencePiece vocabulary), exported."""
  root = tmp_path_factory.mktemp("ours")
  tokenizer = tokenizer_lib.train_sentencepiece(iter(corpus["de"] + corpus["en"]),
                                                str(root / "spm.model"), 200)
  workdir, out = str(root / "run"), str(root / "hf")
  convert.write_run(workdir, _our_run_config(tokenizer.vocab_size), tokenizer, None)
  run = inference.load_run(workdir)
  convert.export_run(run, out)
  hf_model, info = transformers.MarianMTModel.from_pretrained(out, output_loading_info=True)
  rows = np.array([3, 1] + list(range(4, tokenizer.vocab_size)) + [2])  # Marian id -> ours
  return dict(workdir=workdir, out=out, run=run, model=_single_device_model(run),
              hf_model=hf_model.eval(), loading_info=info, rows=rows, outputs={},
              hf_tokenizer=transformers.MarianTokenizer.from_pretrained(out))


def test_export_loads_in_transformers_without_warnings(exported):
  assert not any(exported["loading_info"].values()), exported["loading_info"]
  assert exported["hf_model"].config.pad_token_id == len(exported["rows"]) - 1
  tokenizer, hf_tokenizer = exported["run"].tokenizer, exported["hf_tokenizer"]
  to_ours = {int(m): int(j) for m, j in enumerate(exported["rows"])}
  for text in SOURCES + TARGETS:
    assert [to_ours[m] for m in hf_tokenizer(text)["input_ids"]] == tokenizer.encode(text) + [3]


def _loading_messages(directory: str) -> list[str]:
  """What transformers logs (warnings and above) while loading the model of `directory`."""
  records = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = records.append
  library_logger = logging.getLogger("transformers")
  library_logger.addHandler(handler)
  try:
    transformers.MarianMTModel.from_pretrained(directory)
  finally:
    library_logger.removeHandler(handler)
  return [r.getMessage() for r in records]


def test_export_loads_silently(exported, tmp_path):
  assert _loading_messages(exported["out"]) == []
  # The check can fail: the same directory without one weight makes transformers complain.
  broken = tmp_path / "broken"
  shutil.copytree(exported["out"], broken)
  weights = safetensors_numpy.load_file(str(broken / "model.safetensors"))
  del weights["model.decoder.layers.0.fc1.bias"]
  safetensors_numpy.save_file(weights, str(broken / "model.safetensors"),
                              metadata={"format": "pt"})
  assert any("fc1.bias" in m for m in _loading_messages(str(broken)))


def test_export_logits_equal_ours(exported):
  run = exported["run"]
  ours, theirs, valid, *_ = _logits_pair(exported["model"], run.tokenizer, exported["hf_model"],
                                         exported["hf_tokenizer"], SOURCES, TARGETS)
  rows = exported["rows"]
  # Marian's last id is the decoder start (our BOS), whose logit is never used.
  diff = np.abs(ours[..., rows[:-1]][valid] - theirs[..., :-1][valid]).max()
  assert diff < 1e-5, diff


@pytest.mark.parametrize("beam", [False, True], ids=["greedy", "beam4"])
def test_export_decodes_like_ours(exported, beam):
  marian_of_ours = np.zeros(len(exported["rows"]) + 1, np.int64)
  marian_of_ours[exported["rows"]] = np.arange(len(exported["rows"]))
  ours = _ours_generate(exported["model"], exported["run"].tokenizer, SOURCES, marian_of_ours,
                        beam=beam)
  exported["outputs"]["beam" if beam else "greedy"] = ours
  kwargs = dict(num_beams=4, length_penalty=0.0, early_stopping=False) if beam else dict(
      num_beams=1)
  assert ours == _hf_generate(exported["hf_model"], exported["hf_tokenizer"], SOURCES, **kwargs)


def test_export_refuses_to_overwrite(exported):
  with pytest.raises(convert.ConvertError, match="refusing to overwrite"):
    convert.export_marian(exported["workdir"], exported["out"])


def test_ctranslate2_greedy_equals_ours(exported, tmp_path):
  import ctranslate2  # pylint: disable=import-outside-toplevel
  ct2_dir = str(tmp_path / "ct2")
  ctranslate2.converters.TransformersConverter(exported["out"]).convert(ct2_dir)
  translator = ctranslate2.Translator(ct2_dir, device="cpu", compute_type="float32")
  hf_tokenizer, tokenizer = exported["hf_tokenizer"], exported["run"].tokenizer
  pieces = [hf_tokenizer.convert_ids_to_tokens(hf_tokenizer(s)["input_ids"]) for s in SOURCES]
  results = translator.translate_batch(pieces, beam_size=1, max_decoding_length=MAX_LEN - 1)
  if "greedy" not in exported["outputs"]:
    test_export_decodes_like_ours(exported, False)
  # Our greedy output with forced EOS at step L: its first L - 1 steps are CTranslate2's with
  # max_decoding_length L - 1, which has no forced EOS and leaves EOS out.
  to_ours = exported["rows"]
  for marian_ids, result in zip(exported["outputs"]["greedy"], results):
    ids = [int(to_ours[m]) for m in marian_ids][:MAX_LEN - 1]
    ids = ids[:ids.index(tokenizer.eos_id)] if tokenizer.eos_id in ids else ids
    assert ids and result.hypotheses[0] == [tokenizer.id_to_piece(i) for i in ids]


def test_train_py_keeps_the_imported_model(imported):
  requested = convert.load_config_file(CONFIG)
  adopt = resume.adopt_imported_model  # pylint: disable=protected-access
  adopted = adopt(requested, imported["workdir"])
  saved = checkpointing.read_config_json(imported["workdir"])
  assert adopted["model"] == saved["model"] != requested["model"]
  assert adopted["data"] == dict(requested["data"], vocab_size=saved["data"]["vocab_size"])
  assert adopted["training"] == requested["training"]


def test_reexport_of_an_import_is_the_original_model(imported, tmp_path):
  out = str(tmp_path / "again")
  convert.export_run(imported["run"], out)
  again = transformers.MarianMTModel.from_pretrained(out).eval()
  hf_tokenizer = imported["hf_tokenizer"]
  batch = hf_tokenizer(SOURCES, return_tensors="pt", padding=True)
  start = imported["hf_model"].config.decoder_start_token_id
  decoder_inputs = torch.tensor([[start] + hf_tokenizer(text_target=t)["input_ids"][:4]
                                 for t in TARGETS])
  with torch.no_grad():
    original, exported = (m(**batch, decoder_input_ids=decoder_inputs).logits.numpy()
                          for m in (imported["hf_model"], again))
  # Every logit but the decoder start's (PAD, never generated) comes back.
  keep = np.arange(original.shape[-1]) != start
  np.testing.assert_allclose(exported[..., keep], original[..., keep], rtol=0, atol=1e-5)
  assert json.load(open(os.path.join(out, "vocab.json"))) == json.load(
      open(os.path.join(imported["marian_dir"], "vocab.json")))
