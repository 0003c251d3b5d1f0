"""Decoding speed: cached incremental decoding against recomputing the whole prefix each step.

  python bench/decode.py --manual_dir=../shared/data/multi30k --num_batches=2 --max_decode_len=32
  python bench/decode.py --device=gpu --manual_dir=runs/multi30k --num_batches=16 --repeats=5

(from the repository root, with the package installed or PYTHONPATH=.).

Sources are the Multi30k validation split (de->en), tokenized by the project's pipeline into
batches of (eval_batch_size, max_len); the model is Multi30k-sized (`TransformerConfig.small`,
shared vocabulary 8000) with random weights, so hypotheses rarely emit EOS and decoding runs
to the fixed `--max_decode_len` (stated in the output): the ratio is a per-step speed ratio.

Ours: `transformer.decoding.greedy_translate` / `beam_search_translate` (encoder once, KV
cache, one `lax.while_loop`). Baseline: the same `greedy` / `beam_search` loops driven by a step
function whose "cache" is the token prefix: every step re-embeds and re-runs the whole decoder
on the fixed-shape (B, L) prefix under a causal mask and projects the current position only.
Both are jitted once.

Each (method, implementation) runs in a worker process of its own (`--worker`), one after the
other, after the 1-minute load average has fallen to `--max_load` (a row measured above it is
marked LOADED and left out of the ratios); the workers build the same data and the same model
(fixed seeds) and write their output tokens to a file, so the parent compares the outputs of
cached and no-cache decoding token for token. The last line prints the ratios.

With `--workdir=RUN` (a trained translation run), the benchmark instead compares our decoding
with the ecosystem on the same real sentences (the first `--num_sentences` validation sources of
the run's source language, raw text in, detokenized text out, all sentences of a pass timed
together after a warm-up pass): the run is exported to a Marian directory
(`transformer.convert.export_marian`) and converted to CTranslate2 (`ct2-transformers-converter`),
then timed, each in its own process, as

- ours: the run's model through `evaluation.Translator` (beam search with the KV cache, one
  compiled program per source-length bucket, compiled in the warm-up pass; greedy = beam 1),
- transformers: `MarianMTModel.generate(num_beams=K)` on the export, torch with 2 threads,
- ctranslate2 float32 and int8: `Translator.translate_batch(beam_size=K)`, 2 threads,

with `--beam_size` beams and `--batch_size` sentences per batch; the last line prints our
sentences/s as a ratio to each. Each implementation keeps its own length normalization (ours
the GNMT penalty of the run's config, transformers and CTranslate2 their defaults), so the
outputs are close but not identical; the table gives the output tokens of each.

`--device` picks the backend (default: JAX's default, i.e. the GPU where there is one);
`--dtype=bfloat16` decodes with bf16 compute, `--precision=highest` makes float32 matmuls on a
GPU exact float32 (no TF32), so that cached and no-cache outputs can be compared token for token.
"""

import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import common
from transformer import data
from transformer import decoding
from transformer import model as model_lib

_MANUAL_DIR = flags.DEFINE_string("manual_dir", "../shared/data/multi30k", "Raw Multi30k files.")
_NUM_BATCHES = flags.DEFINE_integer(
    "num_batches", 2, "Validation batches to decode (the no-cache baseline is slow).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Sentences per batch.")
_MAX_DECODE_LEN = flags.DEFINE_integer("max_decode_len", 32, "Fixed decode length L.")
_BEAM = flags.DEFINE_integer("beam_size", 4, "Beam size K.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes over the batches (median).")
_DEVICE = flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"],
                            "Where to decode; auto = JAX's default backend.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_PRECISION = flags.DEFINE_enum("precision", "default", ["default", "high", "highest"],
                               "jax.default_matmul_precision for the whole run.")
_MAX_LOAD = flags.DEFINE_float("max_load", 1.5, "Highest 1-minute load average to start a worker.")
_LOAD_WAIT = flags.DEFINE_integer("load_wait", 180, "Seconds to wait for the load to fall.")
_METHODS = flags.DEFINE_list("methods", ["greedy", "beam"], "Methods to time: greedy, beam.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: METHOD:IMPL of a worker process.")
_OUTPUT = flags.DEFINE_string("output", None, "Internal: the worker's .npy output file.")
_RUN = flags.DEFINE_string("workdir", None, "A trained translation run: compare with "
                           "transformers and CTranslate2 on real sentences instead.")
_NUM_SENTENCES = flags.DEFINE_integer("num_sentences", 256, "With --workdir: sentences timed.")
_ECOSYSTEM_DIR = flags.DEFINE_string("ecosystem_dir", None, "Internal: export and sources.")


def nocache_init(model, inputs: jax.Array, length: int) -> dict:
  """Baseline "cache": the encoder output and a (B, L) token prefix buffer."""
  segmentation = (inputs != model.config.pad_id).astype(jnp.int32)  # (B, S)
  return dict(index=jnp.zeros((), jnp.int32), tokens=jnp.zeros((inputs.shape[0], length),
                                                                 jnp.int32),
              encoded=model.encode(inputs, None, segmentation), segmentation=segmentation)


def nocache_step(model, tokens: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
  """Writes `tokens` (B,) at the index and re-runs the decoder on the whole prefix (B, L)."""
  i = cache["index"]
  prefix = jax.lax.dynamic_update_slice_in_dim(cache["tokens"], tokens[:, None], i, axis=1)
  b, length = prefix.shape
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  x = model.decoder_embedding(prefix, positions)  # (B, L, D)
  # Causal only: every position <= i holds a real token (even if it equals pad_id).
  self_mask = model_lib.make_causal_mask(length)  # (1, 1, L, L)
  cross_mask = (cache["segmentation"] > 0)[:, None, None, :]  # (B, 1, 1, S), as decode_step
  hidden = model.decoder(x, self_mask, cache["encoded"], cross_mask)  # (B, L, D)
  current = jax.lax.dynamic_slice_in_dim(hidden, i, 1, axis=1)  # (B, 1, D)
  logits = model.output_projection(current)[:, 0]  # (B, V)
  return logits, dict(cache, index=i + 1, tokens=prefix)


def make_program(graphdef, method: str, impl: str, length: int, beam_size: int):
  """The jitted (params, inputs) -> outputs of one method ("greedy" / "beam") and impl."""
  def ours_greedy(model, inputs):
    return decoding.greedy_translate(model, inputs, max_decode_len=length)

  def ours_beam(model, inputs):
    return decoding.beam_search_translate(model, inputs, beam_size=beam_size,
                                          max_decode_len=length)

  def base_greedy(model, inputs):
    cfg = model.config
    return decoding.greedy(lambda t, c: nocache_step(model, t, c),
                           nocache_init(model, inputs, length), batch_size=inputs.shape[0],
                           max_decode_len=length, bos_id=cfg.bos_id, eos_id=cfg.eos_id,
                           pad_id=cfg.pad_id)

  def base_beam(model, inputs):
    cfg = model.config
    sequences, scores = decoding.beam_search(
        lambda t, c: nocache_step(model, t, c), nocache_init(model, inputs, length),
        batch_size=inputs.shape[0], beam_size=beam_size, max_decode_len=length,
        bos_id=cfg.bos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id)
    return sequences[:, 0], scores[:, 0]

  fn = {("greedy", "cached"): ours_greedy, ("beam", "cached"): ours_beam,
        ("greedy", "no-cache"): base_greedy, ("beam", "no-cache"): base_beam}[method, impl]
  return jax.jit(lambda params, inputs: fn(nnx.merge(graphdef, params), inputs))


def run(program, params, batches) -> tuple[float, list]:
  """Seconds to decode every batch (synced at the end) and the outputs."""
  start = time.perf_counter()
  outputs = [program(params, inputs) for inputs in batches]
  jax.block_until_ready(outputs)
  return time.perf_counter() - start, outputs


def sequences_of(output) -> np.ndarray:
  return np.asarray(output[0] if isinstance(output, tuple) else output)


def build(device: jax.Device):
  """The validation batches, the number of real rows of each, the model config and params."""
  with tempfile.TemporaryDirectory() as tmp:
    config = data.DataConfig(dataset="multi30k", manual_dir=_MANUAL_DIR.value,
                             data_dir=f"{tmp}/tfds", eval_batch_size=_BATCH.value)
    tokenizer = data.get_tokenizer(config, f"{tmp}/workdir")
    evalset = data.make_eval_dataset(config, tokenizer, "validation")
  all_batches = list(evalset.batches)
  batches = [jax.device_put(jnp.asarray(b["inputs"]), device)
             for b in all_batches[:_NUM_BATCHES.value]]
  rows = [int((np.asarray(b) != 0).any(axis=1).sum()) for b in batches]
  model_cfg = model_lib.TransformerConfig.small(
      tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
      eos_id=tokenizer.eos_id, dtype=_DTYPE.value)
  model = model_lib.EncoderDecoder(model_cfg, rngs=nnx.Rngs(params=0))
  graphdef, params = nnx.split(model, nnx.Param)
  return len(all_batches), batches, rows, model_cfg, graphdef, params


def run_worker(device: jax.Device, method: str, impl: str) -> dict:
  """Worker body: compile and time one method and implementation; saves the output tokens."""
  num_batches, batches, rows, model_cfg, graphdef, params = build(device)
  program = make_program(graphdef, method, impl, _MAX_DECODE_LEN.value, _BEAM.value)
  start = time.perf_counter()
  compiled = program.lower(params, batches[0]).compile()
  compile_s = time.perf_counter() - start
  run(compiled, params, batches)  # Warm-up pass.
  seconds = []
  for _ in range(_REPEATS.value):
    elapsed, outputs = run(compiled, params, batches)
    seconds.append(elapsed)
  sequences = [sequences_of(o)[:r] for o, r in zip(outputs, rows)]
  np.save(_OUTPUT.value, np.concatenate(sequences))
  return dict(compile_s=compile_s, seconds=statistics.median(seconds), sentences=sum(rows),
              tokens=sum(int((s != 0).sum()) for s in sequences), num_batches=num_batches,
              batch_shape=list(batches[0].shape), d_model=model_cfg.d_model,
              layers=model_cfg.num_encoder_layers, vocab=model_cfg.vocab_size,
              jax=jax.__version__, device_kind=device.device_kind, platform=device.platform)


def main(argv):
  del argv
  try:
    device = jax.devices()[0] if _DEVICE.value == "auto" else jax.devices(_DEVICE.value)[0]
  except RuntimeError as e:
    raise app.UsageError(f"--device={_DEVICE.value}: JAX has no such backend here ({e})") from e
  if _WORKER.value and _WORKER.value.startswith("ecosystem:"):
    result = run_ecosystem_worker(_WORKER.value.split(":", 1)[1])
    print("RESULT " + json.dumps(result), flush=True)
    return
  if _WORKER.value:
    method, impl = _WORKER.value.split(":")
    with jax.default_device(device), jax.default_matmul_precision(_PRECISION.value):
      result = run_worker(device, method, impl)
    print("RESULT " + json.dumps(result), flush=True)
    return
  unknown = set(_METHODS.value) - {"greedy", "beam"}
  if unknown:
    raise app.UsageError(f"unknown methods {sorted(unknown)}; choose from greedy, beam")
  if _RUN.value:
    run_ecosystem_benchmark(_RUN.value)
  else:
    run_benchmark()


def _worker_argv(method: str, impl: str, output: str) -> list[str]:
  flag_names = ("manual_dir", "num_batches", "batch_size", "max_decode_len", "beam_size",
                "repeats", "device", "dtype", "precision")
  return ([sys.executable, os.path.abspath(__file__), f"--worker={method}:{impl}",
           f"--output={output}"] + [f"--{n}={flags.FLAGS[n].value}" for n in flag_names])


def run_benchmark() -> None:
  """Runs the four workers one at a time and prints the table and the ratio line."""
  print(f"cpus={os.cpu_count()} load average={os.getloadavg()}; dtype={_DTYPE.value}, matmul "
        f"precision={_PRECISION.value}; each (method, implementation) in its own process, one "
        "at a time")
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for method in _METHODS.value:
      for impl in ("cached", "no-cache"):
        output = os.path.join(tmp, f"{method}_{impl}.npy")
        r = common.run_worker(_worker_argv(method, impl, output), label=f"{method} {impl}",
                              max_load=_MAX_LOAD.value, wait_s=_LOAD_WAIT.value)
        r["sequences"] = np.load(output)
        results[method, impl] = r
  first = results[_METHODS.value[0], "cached"]
  print(f"jax {first['jax']} device={first['device_kind']} ({first['platform']}); Multi30k "
        f"validation: {first['num_batches']} batches of {tuple(first['batch_shape'])}; timing "
        f"{_NUM_BATCHES.value} batches = {first['sentences']} sentences; model small (D="
        f"{first['d_model']}, {first['layers']}+{first['layers']} layers, V={first['vocab']}), "
        f"random weights, max_decode_len={_MAX_DECODE_LEN.value} (fixed), beam {_BEAM.value}, "
        f"median of {_REPEATS.value} passes after a warm-up pass")
  print(f"{'method':<7} {'impl':<9} {'compile s':>9} {'seconds':>8} {'sent/s':>8} "
        f"{'tok/s':>9} {'same as no-cache':>17} {'load':>10}")
  ratios = []
  for method in _METHODS.value:
    cached, base = results[method, "cached"], results[method, "no-cache"]
    same = int((cached["sequences"] == base["sequences"]).all(axis=1).sum())
    for impl, r in (("cached", cached), ("no-cache", base)):
      matching = f"{same}/{r['sentences']}"
      print(f"{method:<7} {impl:<9} {r['compile_s']:>9.1f} {r['seconds']:>8.2f} "
            f"{r['sentences'] / r['seconds']:>8.1f} {r['tokens'] / r['seconds']:>9,.0f} "
            f"{matching:>17} "
            f"{r['load_before']:>4.2f}/{r['load_after']:<4.2f}{'  LOADED' if r['loaded'] else ''}")
    if cached["loaded"] or base["loaded"]:
      ratios.append(f"{method} not measured (load above {_MAX_LOAD.value})")
    else:
      ratios.append(f"{method} {base['seconds'] / cached['seconds']:.1f}x")
  print("ratio cached/no-cache sentences/s: " + ", ".join(ratios))


ECOSYSTEM = ("ours", "transformers", "ctranslate2_float32", "ctranslate2_int8")


def _batches(items: list, size: int) -> list[list]:
  return [items[i:i + size] for i in range(0, len(items), size)]


def _timed_passes(translate_all, sentences: list[str]) -> tuple[float, list[str]]:
  """Warm-up pass (compilation, caches), then the median of --repeats timed passes."""
  outputs = translate_all(sentences)
  seconds = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    outputs = translate_all(sentences)
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), outputs


def _ours_translate_all(workdir: str):
  """Our beam search over the run's model, one compiled program per 16-token length bucket."""
  from transformer.training import evaluation  # pylint: disable=g-import-not-at-top
  from transformer.training import inference  # pylint: disable=g-import-not-at-top

  run = inference.load_run(workdir)
  tokenizer, setup = run.tokenizer, run.setup
  batch_size = -(-_BATCH.value // setup.mesh.size) * setup.mesh.size
  translators = {}

  def translate_all(sentences):
    outputs = []
    encoded = [tokenizer.encode(s)[:setup.model_config.max_len - 1] + [tokenizer.eos_id]
               for s in sentences]
    for chunk in _batches(encoded, batch_size):
      length = min(-(-max(len(x) for x in chunk) // 16) * 16, setup.model_config.max_len)
      inputs = np.full((batch_size, length), tokenizer.pad_id, np.int32)
      for row, ids in enumerate(chunk):
        inputs[row, :len(ids)] = ids
      batch = {"inputs": inputs,
               "inputs_segmentation": (inputs != tokenizer.pad_id).astype(np.int32)}
      if length not in translators:
        translators[length] = evaluation.Translator.create(
            setup, beam_size=_BEAM.value, alpha=run.config.decoding.length_penalty,
            max_decode_len=length + run.config.decoding.max_extra_length)
      index = np.where(np.arange(batch_size) < len(chunk), np.arange(batch_size), -1)
      outputs += translators[length].translate_batches(run.state, [batch], [index], tokenizer,
                                                       len(chunk))
    return outputs

  return translate_all


def _transformers_translate_all(hf_dir: str):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(2)
  model = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
  tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)

  def translate_all(sentences):
    outputs = []
    with torch.inference_mode():
      for chunk in _batches(sentences, _BATCH.value):
        encoded = tokenizer(chunk, return_tensors="pt", padding=True)
        generated = model.generate(**encoded, num_beams=_BEAM.value, do_sample=False)
        outputs += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return outputs

  return translate_all


def _ctranslate2_translate_all(ct2_dir: str, hf_dir: str, compute_type: str):
  import ctranslate2  # pylint: disable=g-import-not-at-top
  import sentencepiece  # pylint: disable=g-import-not-at-top

  translator = ctranslate2.Translator(ct2_dir, device="cpu", compute_type=compute_type,
                                      intra_threads=2)
  source = sentencepiece.SentencePieceProcessor(model_file=os.path.join(hf_dir, "source.spm"))
  target = sentencepiece.SentencePieceProcessor(model_file=os.path.join(hf_dir, "target.spm"))

  def translate_all(sentences):
    tokens = [source.encode(s, out_type=str) + ["</s>"] for s in sentences]
    results = translator.translate_batch(tokens, beam_size=_BEAM.value,
                                         max_batch_size=_BATCH.value)
    return [target.decode(r.hypotheses[0]) for r in results]

  return translate_all


def run_ecosystem_worker(impl: str) -> dict:
  """Worker body: one implementation on the sources in --ecosystem_dir; saves its outputs."""
  root = _ECOSYSTEM_DIR.value
  hf_dir = os.path.join(root, "hf")
  with open(os.path.join(root, "sources.txt"), encoding="utf-8") as f:
    sentences = f.read().splitlines()
  if impl == "ours":
    translate_all = _ours_translate_all(_RUN.value)
  elif impl == "transformers":
    translate_all = _transformers_translate_all(hf_dir)
  elif impl.startswith("ctranslate2_"):
    translate_all = _ctranslate2_translate_all(os.path.join(root, "ct2"), hf_dir,
                                               impl[len("ctranslate2_"):])
  else:
    raise ValueError(f"unknown implementation {impl!r}")
  seconds, outputs = _timed_passes(translate_all, sentences)
  with open(os.path.join(root, f"{impl}.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(outputs) + "\n")
  return dict(seconds=seconds, sentences=len(sentences),
              output_words=sum(len(o.split()) for o in outputs))


def _validation_sources(workdir: str, count: int) -> list[str]:
  """The first `count` raw Multi30k validation sources in the run's source language."""
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    language = json.load(f)["data"]["source_lang"]
  path = os.path.join(_MANUAL_DIR.value, f"val.{language}.gz")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [line.strip() for line in f][:count]


def run_ecosystem_benchmark(workdir: str) -> None:
  """Exports the run, converts it, times the four implementations; prints table and ratios."""
  from transformer import convert  # pylint: disable=g-import-not-at-top

  print(f"cpus={os.cpu_count()} load average={os.getloadavg()}; run {workdir}; beam "
        f"{_BEAM.value}, batch {_BATCH.value}; each implementation in its own process, one at "
        "a time")
  results = {}
  with tempfile.TemporaryDirectory() as root:
    sentences = _validation_sources(workdir, _NUM_SENTENCES.value)
    with open(os.path.join(root, "sources.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(sentences) + "\n")
    convert.export_marian(workdir, os.path.join(root, "hf"))
    subprocess.run([sys.executable, "-m", "ctranslate2.converters.transformers", "--model",
                    os.path.join(root, "hf"), "--output_dir", os.path.join(root, "ct2")],
                   check=True, capture_output=True)
    for impl in ECOSYSTEM:
      argv = ([sys.executable, os.path.abspath(__file__), f"--worker=ecosystem:{impl}",
               f"--ecosystem_dir={root}", f"--workdir={os.path.abspath(workdir)}"]
              + [f"--{n}={flags.FLAGS[n].value}" for n in ("beam_size", "batch_size", "repeats",
                                                            "manual_dir")])
      results[impl] = common.run_worker(argv, label=impl, max_load=_MAX_LOAD.value,
                                        wait_s=_LOAD_WAIT.value)
      with open(os.path.join(root, f"{impl}.txt"), encoding="utf-8") as f:
        results[impl]["outputs"] = f.read().splitlines()
  ours = results["ours"]
  print(f"{len(sentences)} Multi30k validation sentences, median of {_REPEATS.value} passes "
        "after a warm-up pass")
  print(f"{'implementation':<20} {'seconds':>8} {'sent/s':>8} {'words out':>9} "
        f"{'same as ours':>12} {'load':>10}")
  for impl, r in results.items():
    same = sum(a == b for a, b in zip(r["outputs"], ours["outputs"]))
    print(f"{impl:<20} {r['seconds']:>8.2f} {r['sentences'] / r['seconds']:>8.1f} "
          f"{r['output_words']:>9} {f'{same}/{len(sentences)}':>12} "
          f"{r['load_before']:>4.2f}/{r['load_after']:<4.2f}{'  LOADED' if r['loaded'] else ''}")
  ratios = [f"{ours_vs(ours, r)} {impl}" for impl, r in results.items() if impl != "ours"]
  print(f"ratio of our sentences/s (beam {_BEAM.value}): " + ", ".join(ratios))


def ours_vs(ours: dict, other: dict) -> str:
  if ours["loaded"] or other["loaded"]:
    return "not measured (load above the limit) vs"
  return f"{other['seconds'] / ours['seconds']:.2f}x"


if __name__ == "__main__":
  app.run(main)
