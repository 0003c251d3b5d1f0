r"""Marian models (transformers' MarianMTModel, the opus-mt models) in and out of a workdir.

  python -m transformer.convert --from_hf=DIR --workdir=OUT [--config=configs/multi30k.py]
  python -m transformer.convert --workdir=RUN --to_hf=DIR [--average_last_k=5]
  ct2-transformers-converter --model DIR --output_dir DIR_ct2 [--quantization int8]

Import reads a local Marian directory as `save_pretrained` or a Hub snapshot leaves it
(config.json, model.safetensors or pytorch_model.bin, source.spm, target.spm, vocab.json,
tokenizer_config.json, generation_config.json; a Hub id such as Helsinki-NLP/opus-mt-de-en is
first fetched with `huggingface_hub.snapshot_download`, the only step that needs a network) and
writes a workdir that `translate`, `evaluate` and `train.py` accept: config.json (the --config
file's data, optimizer and training sections around the imported model; `num_beams` of the
generation config becomes decoding.beam_size), `marian_tokenizer/` and a step-0 checkpoint.
Fine-tuning is `python train.py --config=<the same file> --workdir=OUT`. Export writes a Marian
directory that `MarianMTModel.from_pretrained` / `MarianTokenizer.from_pretrained` load and
`ct2-transformers-converter` converts. The weight, dimension and id mappings are tabulated in
`transformer.marian`.
"""

import dataclasses
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
from flax import nnx

from transformer import checkpointing
from transformer import marian
from transformer import sharding
from transformer.data import tokenizer as tokenizer_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "multi30k.py")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "target_vocab.json")


class ConvertError(ValueError):
  """A conversion that cannot be done; the message says why."""


def _check_empty_target(path: str, flag: str) -> None:
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ConvertError(f"{flag}={path} exists and is not an empty directory; refusing to "
                       "overwrite it (choose a new directory)")


def _read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def resolve_model_dir(name: str) -> str:
  """A local Marian directory for `name`: itself if it is a directory, else a Hub snapshot."""
  if os.path.isdir(name):
    return name
  if os.path.exists(name) or name.startswith((".", "/")) or name.count("/") != 1:
    raise ConvertError(f"--from_hf={name} is neither a directory nor a Hub model id")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConvertError(f"--from_hf={name} is not a local directory, and downloading it needs "
                       "huggingface_hub (pip install 'transformer[hf]')") from e
  return huggingface_hub.snapshot_download(name, allow_patterns=[
      "*.json", "*.spm", "model.safetensors", "pytorch_model.bin"])


def read_marian_weights(directory: str) -> dict:
  """State-dict name -> float32 numpy array from model.safetensors or pytorch_model.bin."""
  for name in _WEIGHT_FILES:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      continue
    if name.endswith(".safetensors"):
      from safetensors import numpy as safetensors_numpy  # pylint: disable=import-outside-toplevel
      return dict(safetensors_numpy.load_file(path))
    import torch  # pylint: disable=import-outside-toplevel
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise ConvertError(f"{directory} is not a Marian model directory: it has none of "
                     f"{_WEIGHT_FILES}")


def read_marian_config(directory: str) -> tuple[dict, dict]:
  """(config.json, generation_config.json or {}) of a Marian directory, checked."""
  config = _read_json(os.path.join(directory, "config.json"))
  if config is None:
    raise ConvertError(f"{directory} is not a Marian model directory: it has no config.json")
  try:
    marian.check_config(config)
  except marian.ConversionError as e:
    raise ConvertError(f"{directory}: {e}") from e
  return config, _read_json(os.path.join(directory, "generation_config.json"), {})


def marian_tokenizer(directory: str, config: dict) -> tokenizer_lib.MarianTokenizer:
  """The tokenizer of a Marian directory, special ids from its config and vocabulary."""
  tokenizer_config = _read_json(os.path.join(directory, "tokenizer_config.json"), {})
  vocab = _read_json(os.path.join(directory, "vocab.json"))
  if vocab is None:
    raise ConvertError(f"{directory} is not a Marian model directory: it has no vocab.json")
  unk_token = tokenizer_config.get("unk_token", "<unk>")
  unk_token = unk_token["content"] if isinstance(unk_token, dict) else unk_token
  source_size, target_size = marian.vocab_sizes(config)
  separate = bool(tokenizer_config.get("separate_vocabs", False))
  if separate:
    vocab = _read_json(os.path.join(directory, "target_vocab.json"), vocab)
  if unk_token not in vocab:
    raise ConvertError(f"{directory}: the vocabulary has no unknown token {unk_token!r}")
  pad_id = config["pad_token_id"]
  try:
    return tokenizer_lib.MarianTokenizer.from_marian_files(
        directory, pad_id=pad_id, unk_id=vocab[unk_token], eos_id=config["eos_token_id"],
        decoder_start_token_id=config.get("decoder_start_token_id", pad_id),
        source_vocab_size=source_size, target_vocab_size=target_size,
        separate_vocabs=separate)
  except ValueError as e:
    raise ConvertError(str(e)) from e


def load_config_file(path: str) -> dict:
  """The dict of a config file's `get_config()` (as train.py loads --config)."""
  if not os.path.exists(path):
    raise ConvertError(f"--config={path} does not exist")
  spec = importlib.util.spec_from_file_location("_convert_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().to_dict()


def imported_run_config(base: dict, fields: dict, vocab_size: int, generation: dict) -> dict:
  """The run config of an imported model: `base` with the model section and vocabulary size
  replaced, data.max_len capped by the model's positions, beams from the generation config."""
  data = dict(base["data"], vocab_size=vocab_size,
              max_len=min(base["data"]["max_len"], fields["max_len"]))
  decoding = dict(base["decoding"])
  if generation.get("num_beams"):
    decoding["beam_size"] = int(generation["num_beams"])
  training = dict(base["training"], task="translation")
  return dict(base, model=dict(fields), data=data, decoding=decoding, training=training)


def import_marian(model_dir: str, workdir: str, *, config_path: str = _DEFAULT_CONFIG) -> dict:
  """Writes a workdir holding the Marian model of `model_dir` as a step-0 checkpoint.

  Args:
    model_dir: a local Marian directory (see the module docstring).
    workdir: the directory to write; must not exist or be empty.
    config_path: config file giving the data, optimizer, training and decoding sections.

  Returns:
    The run config written to `workdir/config.json`.
  """
  _check_empty_target(workdir, "--workdir")
  if not os.path.isdir(model_dir):
    raise ConvertError(f"--from_hf={model_dir} is not a directory")
  config, generation = read_marian_config(model_dir)
  weights = read_marian_weights(model_dir)
  tokenizer = marian_tokenizer(model_dir, config)
  try:
    params = marian.params_from_marian(weights, config, tokenizer.source_id_map,
                                       tokenizer.target_id_map)
  except marian.ConversionError as e:
    raise ConvertError(f"{model_dir}: {e}") from e
  run_config = imported_run_config(load_config_file(config_path), marian.model_fields(config),
                                   tokenizer.vocab_size, generation)
  write_run(workdir, run_config, tokenizer, params)
  with open(os.path.join(workdir, "imported_from.json"), "w") as f:
    json.dump({"model_dir": os.path.abspath(model_dir), "generation_config": generation}, f,
              indent=2)
  logging.info("Imported %s into %s (vocabulary %d).", model_dir, workdir, tokenizer.vocab_size)
  return run_config


def write_run(workdir: str, run_config: dict, tokenizer: tokenizer_lib.Tokenizer,
              params: dict | None) -> None:
  """Writes a train.py workdir: config.json, the tokenizer and a step-0 checkpoint.

  Args:
    workdir: the directory (created).
    run_config: the resolved run config (all sections).
    tokenizer: a `MarianTokenizer` (written to `marian_tokenizer/`) or a
      `SentencePieceTokenizer` (written to `sentencepiece.model`).
    params: `EncoderDecoder` parameters as an `nnx.to_pure_dict` tree; None initializes them
      from the config's seed, as train.py would.
  """
  # Imported here: the training package (orbax, grain) is not needed by `transformer.marian`.
  from transformer.training import builder  # pylint: disable=import-outside-toplevel
  from transformer.training import run_config as run_config_lib  # pylint: disable=import-outside-toplevel
  from transformer.training import state as state_lib  # pylint: disable=import-outside-toplevel

  cfg = run_config_lib.parse_config(run_config)
  model_config = builder.make_model_config(
      cfg.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
      bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
      input_vocab_size=tokenizer.source_vocab_size)
  setup = builder.make_train_setup(
      task=cfg.task, model_config=model_config, optimizer_config=cfg.optimizer,
      num_train_steps=cfg.training.num_train_steps,
      label_smoothing=cfg.training.label_smoothing, seed=cfg.training.seed,
      mesh=sharding.make_mesh(sharding.MeshConfig()))
  if params is None:
    params = jax.device_get(nnx.to_pure_dict(setup.init_state().params))
  # Built directly on one device rather than through `init_state`, which would compile an
  # initialization whose parameters are thrown away (and make orbax copy every replicated
  # array); restoring lays the state out on whatever mesh the reader has.
  values = _with_values(setup.abstract_state.params, params)
  base_key = jax.random.PRNGKey(cfg.training.seed)
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=values,
      model_state=jax.tree.map(jnp.zeros_like, setup.abstract_state.model_state),
      opt_state=setup.tx.init(values), rng=jax.random.fold_in(base_key, 1))
  os.makedirs(workdir, exist_ok=True)
  if isinstance(tokenizer, tokenizer_lib.MarianTokenizer):
    tokenizer.save(os.path.join(workdir, tokenizer_lib.MARIAN_DIR))
  else:
    with open(os.path.join(workdir, "sentencepiece.model"), "wb") as f:
      f.write(tokenizer.model_proto)
  checkpointing.write_config_json(workdir, run_config)
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=cfg.training.max_checkpoints_to_keep,
      best_metric=cfg.training.best_metric, async_save=False)
  try:
    checkpointer.save(0, state, config=run_config)
    checkpointer.wait()
  finally:
    checkpointer.close()


def _with_values(abstract: nnx.State, values: dict) -> nnx.State:
  """`abstract` (an nnx.State of params) holding `values` (a pure dict) as jax arrays."""
  expected = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), nnx.to_pure_dict(abstract))
  got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), values)
  if expected != got:
    raise ConvertError(f"converted parameters do not fit the model: expected {expected}, "
                       f"got {got}")
  state = jax.tree.map(lambda x: x, abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, values))
  return state


def _rows_of_marian_ids(id_map: np.ndarray) -> np.ndarray:
  """Inverse of an our-id -> Marian-id map: (V_Marian,) our id of each Marian id (PAD for the
  start id, which our BOS shares)."""
  rows = np.zeros(int(id_map.max()) + 1, np.int64)
  for ours in reversed(range(len(id_map))):
    rows[id_map[ours]] = ours
  return rows


def _export_vocabulary(tokenizer: tokenizer_lib.Tokenizer) -> dict:
  """Marian ids of an export: rows (our row of each Marian id, per side), specials, files."""
  if isinstance(tokenizer, tokenizer_lib.MarianTokenizer):
    info = tokenizer.info
    start = info["decoder_start_token_id"]
    target_rows = _rows_of_marian_ids(tokenizer.target_id_map)
    target_rows[start] = tokenizer_lib.BOS_ID  # The decoder start row is our BOS row.
    files = {name: data for name, data in tokenizer.files.items() if name in _TOKENIZER_FILES}
    return dict(source_rows=_rows_of_marian_ids(tokenizer.source_id_map),
                target_rows=target_rows, eos_id=info["eos_id"], unk_id=info["unk_id"],
                pad_id=info["pad_id"], start_id=start, eos_token=info["eos_token"],
                unk_token=info["unk_token"], pad_token=info["pad_token"], files=files,
                separate_vocabs=tokenizer.separate_vocabs)
  if isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer):
    # The opus-mt layout: EOS 0, UNK 1, ordinary pieces, PAD (the decoder start) last. Our PAD
    # row is dropped; our BOS row is the start row.
    v = tokenizer.vocab_size
    rows = np.array([tokenizer_lib.EOS_ID, tokenizer_lib.UNK_ID]
                    + list(range(tokenizer_lib.BOS_ID + 2, v)) + [tokenizer_lib.BOS_ID])
    pieces = [tokenizer.id_to_piece(j) for j in rows[:-1]] + ["<pad>"]
    vocab = {piece: m for m, piece in enumerate(pieces)}
    proto = tokenizer.model_proto
    files = {"source.spm": proto, "target.spm": proto,
             "vocab.json": json.dumps(vocab, ensure_ascii=False, indent=2).encode()}
    return dict(source_rows=rows, target_rows=rows, eos_id=0, unk_id=1, pad_id=len(rows) - 1,
                start_id=len(rows) - 1, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                files=files, separate_vocabs=False)
  raise ConvertError(f"cannot export a {type(tokenizer).__name__}: Marian models need "
                     "SentencePiece vocabularies")


def export_marian(workdir: str, output_dir: str, *, step: int | None = None,
                  average_last_k: int = 1) -> None:
  """Writes the run in `workdir` as a Marian directory (safetensors, tokenizer, generation
  config) at `output_dir`, which must not exist or be empty."""
  from transformer.training import inference  # pylint: disable=import-outside-toplevel

  _check_empty_target(output_dir, "--to_hf")
  export_run(inference.load_run(workdir, step=step, average_last_k=average_last_k), output_dir)


def export_run(run, output_dir: str) -> None:
  """`export_marian` of a loaded run (`transformer.training.inference.LoadedRun`)."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=import-outside-toplevel

  _check_empty_target(output_dir, "--to_hf")
  workdir = run.workdir
  if not run.run.task.decodes:
    raise ConvertError(f"{workdir} trained task {run.run.task.name!r}; only translation models "
                       "export to Marian")
  fields = dataclasses.asdict(run.setup.model_config)
  if fields["layer_norm_epsilon"] != marian.MARIAN_LAYER_NORM_EPSILON:
    logging.warning("layer_norm_epsilon=%g but transformers' Marian uses %g: outputs of the "
                    "export will differ slightly from this run's.", fields["layer_norm_epsilon"],
                    marian.MARIAN_LAYER_NORM_EPSILON)
  vocab = _export_vocabulary(run.tokenizer)
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(jax.device_get(run.state.params)))
  try:
    config = marian.marian_config(
        fields, source_vocab_size=len(vocab["source_rows"]),
        target_vocab_size=len(vocab["target_rows"]), eos_id=vocab["eos_id"],
        unk_id=vocab["unk_id"], pad_id=vocab["pad_id"])
    weights = marian.marian_from_params(params, fields, vocab["source_rows"],
                                        vocab["target_rows"], target_start=vocab["start_id"])
  except marian.ConversionError as e:
    raise ConvertError(f"{workdir}: {e}") from e
  config["decoder_start_token_id"] = vocab["start_id"]
  os.makedirs(output_dir, exist_ok=True)
  safetensors_numpy.save_file(weights, os.path.join(output_dir, "model.safetensors"),
                              metadata={"format": "pt"})
  for name, data in vocab["files"].items():
    with open(os.path.join(output_dir, name), "wb") as f:
      f.write(data)
  _write_json(os.path.join(output_dir, "config.json"), config)
  _write_json(os.path.join(output_dir, "generation_config.json"), {
      "bad_words_ids": [[vocab["pad_id"]]],
      "decoder_start_token_id": vocab["start_id"],
      "eos_token_id": vocab["eos_id"],
      "forced_eos_token_id": vocab["eos_id"],
      "pad_token_id": vocab["pad_id"],
      "max_length": fields["max_len"],
      "num_beams": run.config.decoding.beam_size,
  })
  _write_json(os.path.join(output_dir, "tokenizer_config.json"), {
      "tokenizer_class": "MarianTokenizer",
      "source_lang": run.config.data.source_lang,
      "target_lang": run.config.data.target_lang,
      "eos_token": vocab["eos_token"],
      "unk_token": vocab["unk_token"],
      "pad_token": vocab["pad_token"],
      "model_max_length": fields["max_len"],
      "separate_vocabs": vocab["separate_vocabs"],
  })
  logging.info("Exported %s (checkpoint steps %s) to %s.", workdir, run.steps, output_dir)


def _write_json(path: str, value: dict) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)


def _define_flags() -> None:
  """Defines the command-line flags (only when run as a program: translate and evaluate, which
  tests import into the same process, define --workdir too)."""
  flags.DEFINE_string("from_hf", None, "Marian model directory (or Hub id) to import.")
  flags.DEFINE_string("to_hf", None, "Directory to write the workdir's model to.")
  flags.DEFINE_string("workdir", None, "The run directory (written by an import).",
                      required=True)
  flags.DEFINE_string("config", _DEFAULT_CONFIG, "Import: config file whose data, optimizer, "
                      "training and decoding sections the workdir gets.")
  flags.DEFINE_integer("step", None, "Export: checkpoint step; default the latest.")
  flags.DEFINE_integer("average_last_k", 1, "Export: average the last k checkpoints.")


def main(argv):
  del argv
  from transformer.training import errors  # pylint: disable=import-outside-toplevel

  values = flags.FLAGS
  if (values.from_hf is None) == (values.to_hf is None):
    raise app.UsageError("give exactly one of --from_hf (import) and --to_hf (export)")
  try:
    if values.from_hf is not None:
      import_marian(resolve_model_dir(values.from_hf), values.workdir, config_path=values.config)
    else:
      export_marian(values.workdir, values.to_hf, step=values.step,
                    average_last_k=values.average_last_k)
  except (ValueError, errors.TrainingError) as e:  # ConvertError, and the loaders' bad input.
    raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  _define_flags()
  app.run(main)
