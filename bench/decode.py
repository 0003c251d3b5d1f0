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

With `--workdir=RUN` (a trained translation run), the benchmark instead times what a user runs
on real sentences, beside the ecosystem:

  python bench/decode.py --workdir=runs/bench_decode --num_sentences=256 --batch_size=32 \
      --beam_size=4

The sources are the first `--num_sentences` Multi30k validation sentences of the run's source
language (raw text in, detokenized text out). The run is exported to a Marian directory
(`transformer.convert.export_marian`) and converted to CTranslate2 (`ct2-transformers-converter`)
first. Then every row below runs in its own worker process, one at a time, for each of
`--methods` (greedy, and beam search with `--beam_size` K), `--batch_size` sentences per batch:

- ours: `transformer.Translator.from_workdir(RUN, batch_size=...)` (loading is not timed), then
  `.greedy(sentences)` or `.translate(sentences, beam_size=K, early_stopping=...)`: sentences
  sorted by length, source width padded to a multiple of 16, KV cache, one compiled program per
  (settings, width). Beam search is timed with both stopping rules of `decoding.beam_search`:
  ours_beam_exact ("exact", the default: stop when no live beam can still win, even at the
  maximum length) and ours_beam_heuristic ("heuristic": judge live beams at their current
  length, as Hugging Face does by default);
- ours_nocache: the same trained model, batches, decode lengths and length penalty, decoded
  Hugging-Face-style without a KV cache: every step re-runs the decoder on the whole (B, L)
  prefix (`nocache_step`; beam with the "exact" rule); one jitted program per decode length;
- transformers: `MarianMTModel.generate(num_beams=K)` (num_beams=1 for greedy) on the export,
  torch with 2 threads;
- ctranslate2 float32 and int8: `Translator.translate_batch(beam_size=K)` (1 for greedy),
  2 threads.

Each worker builds its translator, then times one first call over all sentences (for ours it
traces and compiles every program: the "first call s" column) and then `--repeats` passes (their
median gives sentences/s). The table gives each row's output words and how many outputs equal
ours (greedy) or ours_beam_exact (beam): ours_nocache computes the same function, so it matches
up to float rounding; the peers keep their own length normalization (ours the GNMT penalty of the
run's config), so they are close, not identical. The last lines print our sentences/s as a ratio
to each other row, per method and per beam stopping rule. Ours decodes on JAX's default backend
in the run's dtype (`--device`, `--dtype` and `--precision` apply to the random-weights mode).

`--device` picks the backend (default: JAX's default, i.e. the GPU where there is one);
`--dtype=bfloat16` decodes with bf16 compute, `--precision=highest` makes float32 matmuls on a
GPU exact float32 (no TF32), so that cached and no-cache outputs can be compared token for token.
"""

import functools
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
import transformer
from transformer import data
from transformer import decoding
from transformer import model as model_lib
from transformer import sharding

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
_WORKER = flags.DEFINE_string("worker", None, "Internal: [ecosystem:]METHOD:IMPL of a worker "
                              "process.")
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


def make_program(graphdef, method: str, impl: str, length: int, beam_size: int, *,
                 alpha: float = 0.6, early_stopping: str = "exact"):
  """The jitted (states, inputs) -> outputs of one method ("greedy" / "beam") and impl.

  `states` is the tuple of nnx states `nnx.merge(graphdef, *states)` rebuilds the model from;
  beam search returns (best sequences (B, L), their scores (B,)).
  """
  def ours_greedy(model, inputs):
    return decoding.greedy_translate(model, inputs, max_decode_len=length)

  def ours_beam(model, inputs):
    return decoding.beam_search_translate(model, inputs, beam_size=beam_size, alpha=alpha,
                                          max_decode_len=length, early_stopping=early_stopping)

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
        bos_id=cfg.bos_id, eos_id=cfg.eos_id, alpha=alpha, pad_id=cfg.pad_id,
        early_stopping=early_stopping)
    return sequences[:, 0], scores[:, 0]

  fn = {("greedy", "cached"): ours_greedy, ("beam", "cached"): ours_beam,
        ("greedy", "no-cache"): base_greedy, ("beam", "no-cache"): base_beam}[method, impl]
  return jax.jit(lambda states, inputs: fn(nnx.merge(graphdef, *states), inputs))


def run(program, states, batches) -> tuple[float, list]:
  """Seconds to decode every batch (synced at the end) and the outputs."""
  start = time.perf_counter()
  outputs = [program(states, inputs) for inputs in batches]
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
  states = (params,)
  start = time.perf_counter()
  compiled = program.lower(states, batches[0]).compile()
  compile_s = time.perf_counter() - start
  run(compiled, states, batches)  # Warm-up pass.
  seconds = []
  for _ in range(_REPEATS.value):
    elapsed, outputs = run(compiled, states, batches)
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
    _, method, impl = _WORKER.value.split(":")
    result = run_ecosystem_worker(method, impl)
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


# The rows of each method, ours first. "same as ours" compares every row with REFERENCE's.
ECOSYSTEM = {
    "greedy": ("ours", "ours_nocache", "transformers", "ctranslate2_float32",
               "ctranslate2_int8"),
    "beam": ("ours_beam_exact", "ours_beam_heuristic", "ours_nocache", "transformers",
             "ctranslate2_float32", "ctranslate2_int8"),
}
REFERENCE = {"greedy": "ours", "beam": "ours_beam_exact"}
# When each beam row stops a batch (`decoding.beam_search` for ours; no-cache uses "exact", so
# that its outputs can be compared with ours_beam_exact token for token).
BEAM_STOPPING = {
    "ours_beam_exact": "exact", "ours_beam_heuristic": "heuristic", "ours_nocache": "exact",
    "transformers": "HF default", "ctranslate2_float32": "K finished",
    "ctranslate2_int8": "K finished",
}


def _batches(items: list, size: int) -> list[list]:
  return [items[i:i + size] for i in range(0, len(items), size)]


def time_passes(translate_all, sentences: list[str], repeats: int) -> dict:
  """The first call timed alone (tracing, compiling, caches), then `repeats` timed passes.

  Returns:
    {"first_s": seconds of the first call, "seconds": median seconds of the timed passes,
     "outputs": the texts of the last pass}.
  """
  start = time.perf_counter()
  outputs = translate_all(sentences)
  first_s = time.perf_counter() - start
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    outputs = translate_all(sentences)
    seconds.append(time.perf_counter() - start)
  return {"first_s": first_s, "seconds": statistics.median(seconds), "outputs": outputs}


def nocache_translate_all(translator, method: str, *, beam_size: int, early_stopping: str):
  """The translator's trained model decoded without a KV cache, on the translator's batches.

  Every step re-runs the decoder on the whole (B, L) prefix buffer (`nocache_step`), as
  Hugging Face models do with `use_cache=False`; batches (sorted by length, source width padded
  to a multiple of 16), decode lengths, length penalty and detokenization are the
  translator's, so the outputs are comparable with `translator.greedy` / `translate`.

  Returns:
    (translate_all(sentences) -> texts, compilations() -> programs compiled so far).
  """
  loaded = translator.loaded
  states = (loaded.state.params, loaded.state.model_state)
  alpha = float(loaded.config.decoding.length_penalty)
  programs = {}  # Decode length L -> jitted program (each sees one shape: one compilation).

  # The translator's own batching and decode lengths (private, so that the two cannot drift).
  batches_of = translator.batches
  decode_len = translator.decode_len

  def translate_all(sentences):
    texts = ["" for _ in sentences]
    for batch in batches_of(sentences):
      length = decode_len(batch.inputs.shape[1], None)
      if length not in programs:
        programs[length] = make_program(loaded.setup.graphdef, method, "no-cache", length,
                                        beam_size, alpha=alpha, early_stopping=early_stopping)
      inputs = sharding.make_global_batch({"inputs": batch.inputs}, translator.mesh)["inputs"]
      sequences = sequences_of(jax.device_get(programs[length](states, inputs)))
      for row, number in enumerate(batch.rows):
        texts[number] = translator.tokenizer.decode(sequences[row].tolist())
    return texts

  return translate_all, lambda: len(programs)


def ours_translate_all(impl: str, method: str, *, workdir: str, batch_size: int,
                       beam_size: int):
  """A row of ours: `transformer.Translator` as a user runs it, or its no-cache twin.

  Returns:
    (translate_all(sentences) -> texts, compilations() -> programs compiled so far).
  """
  translator = transformer.Translator.from_workdir(workdir, batch_size=batch_size)
  if impl == "ours_nocache":
    return nocache_translate_all(translator, method, beam_size=beam_size,
                                 early_stopping=BEAM_STOPPING[impl])
  if method == "greedy":
    translate_all = translator.greedy
  else:
    translate_all = functools.partial(translator.translate, beam_size=beam_size,
                                      early_stopping=BEAM_STOPPING[impl])
  return translate_all, lambda: translator.num_compilations


def _transformers_translate_all(hf_dir: str, *, num_beams: int, batch_size: int):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(2)
  model = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
  tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)

  def translate_all(sentences):
    outputs = []
    with torch.inference_mode():
      for chunk in _batches(sentences, batch_size):
        encoded = tokenizer(chunk, return_tensors="pt", padding=True)
        generated = model.generate(**encoded, num_beams=num_beams, do_sample=False)
        outputs += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return outputs

  return translate_all


def _ctranslate2_translate_all(ct2_dir: str, hf_dir: str, compute_type: str, *, beam_size: int,
                               batch_size: int):
  import ctranslate2  # pylint: disable=g-import-not-at-top
  import sentencepiece  # pylint: disable=g-import-not-at-top

  translator = ctranslate2.Translator(ct2_dir, device="cpu", compute_type=compute_type,
                                      intra_threads=2)
  source = sentencepiece.SentencePieceProcessor(model_file=os.path.join(hf_dir, "source.spm"))
  target = sentencepiece.SentencePieceProcessor(model_file=os.path.join(hf_dir, "target.spm"))

  def translate_all(sentences):
    tokens = [source.encode(s, out_type=str) + ["</s>"] for s in sentences]
    results = translator.translate_batch(tokens, beam_size=beam_size, max_batch_size=batch_size)
    return [target.decode(r.hypotheses[0]) for r in results]

  return translate_all


def ecosystem_row(method: str, impl: str, sentences: list[str], *, workdir: str,
                  export_dir: str | None, batch_size: int, beam_size: int,
                  repeats: int) -> dict:
  """Builds one row's translator (not timed) and times it on `sentences` (`time_passes`).

  Args:
    method: "greedy" or "beam" (the peers get beam 1 for greedy).
    impl: a row of ECOSYSTEM[method].
    sentences: raw source sentences.
    workdir: the trained run (ours).
    export_dir: its Marian export ("hf") and CTranslate2 conversion ("ct2"); peers only.
    batch_size: sentences per batch.
    beam_size: beams K of the beam rows.
    repeats: timed passes after the first call.

  Returns:
    {"first_s", "seconds", "outputs", "sentences", "output_words", "compilations"} where
    "compilations" counts our compiled programs after the timed passes (None for the peers).
  """
  if impl not in ECOSYSTEM[method]:
    raise ValueError(f"{impl!r} is not a {method} row; choose from {ECOSYSTEM[method]}")
  beams = 1 if method == "greedy" else beam_size
  compilations = None
  if impl.startswith("ours"):
    translate_all, compilations = ours_translate_all(impl, method, workdir=workdir,
                                                     batch_size=batch_size, beam_size=beams)
  elif impl == "transformers":
    translate_all = _transformers_translate_all(os.path.join(export_dir, "hf"),
                                                num_beams=beams, batch_size=batch_size)
  else:
    translate_all = _ctranslate2_translate_all(
        os.path.join(export_dir, "ct2"), os.path.join(export_dir, "hf"),
        impl[len("ctranslate2_"):], beam_size=beams, batch_size=batch_size)
  result = time_passes(translate_all, sentences, repeats)
  result.update(sentences=len(sentences),
                output_words=sum(len(o.split()) for o in result["outputs"]),
                compilations=compilations() if compilations else None)
  return result


def run_ecosystem_worker(method: str, impl: str) -> dict:
  """Worker body: one row on the sources in --ecosystem_dir; saves its outputs there."""
  root = _ECOSYSTEM_DIR.value
  with open(os.path.join(root, "sources.txt"), encoding="utf-8") as f:
    sentences = f.read().splitlines()
  result = ecosystem_row(method, impl, sentences, workdir=_RUN.value, export_dir=root,
                         batch_size=_BATCH.value, beam_size=_BEAM.value, repeats=_REPEATS.value)
  with open(os.path.join(root, f"{method}_{impl}.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(result.pop("outputs")) + "\n")
  return result


def _validation_sources(workdir: str, count: int) -> list[str]:
  """The first `count` raw Multi30k validation sources in the run's source language."""
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    language = json.load(f)["data"]["source_lang"]
  path = os.path.join(_MANUAL_DIR.value, f"val.{language}.gz")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [line.strip() for line in f][:count]


def run_ecosystem_benchmark(workdir: str) -> None:
  """Exports the run, converts it, times every row of each method; prints table and ratios."""
  from transformer import convert  # pylint: disable=g-import-not-at-top

  print(f"cpus={os.cpu_count()} load average={os.getloadavg()}; run {workdir}; beam "
        f"{_BEAM.value}, batch {_BATCH.value}; each row in its own process, one at a time")
  results = {}
  with tempfile.TemporaryDirectory() as root:
    sentences = _validation_sources(workdir, _NUM_SENTENCES.value)
    with open(os.path.join(root, "sources.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(sentences) + "\n")
    convert.export_marian(workdir, os.path.join(root, "hf"))
    subprocess.run([sys.executable, "-m", "ctranslate2.converters.transformers", "--model",
                    os.path.join(root, "hf"), "--output_dir", os.path.join(root, "ct2")],
                   check=True, capture_output=True)
    for method in _METHODS.value:
      for impl in ECOSYSTEM[method]:
        argv = ([sys.executable, os.path.abspath(__file__), f"--worker=ecosystem:{method}:{impl}",
                 f"--ecosystem_dir={root}", f"--workdir={os.path.abspath(workdir)}"]
                + [f"--{n}={flags.FLAGS[n].value}" for n in ("beam_size", "batch_size",
                                                              "repeats", "manual_dir")])
        r = common.run_worker(argv, label=f"{method} {impl}", max_load=_MAX_LOAD.value,
                              wait_s=_LOAD_WAIT.value)
        with open(os.path.join(root, f"{method}_{impl}.txt"), encoding="utf-8") as f:
          r["outputs"] = f.read().splitlines()
        results[method, impl] = r
  for line in ecosystem_table(results, _METHODS.value, beam_size=_BEAM.value,
                              repeats=_REPEATS.value):
    print(line)


def ecosystem_table(results: dict, methods: list[str], *, beam_size: int,
                    repeats: int) -> list[str]:
  """The table of the measured rows and the ratio lines.

  Args:
    results: (method, impl) -> `ecosystem_row`'s dict plus `common.run_worker`'s load fields;
      rows of ECOSYSTEM that are missing are left out.
    methods: the methods to report, in order.
    beam_size: K, for the text.
    repeats: timed passes per row, for the text.
  """
  num_sentences = next(iter(results.values()))["sentences"]
  lines = [
      (f"{num_sentences} sentences; 'first call s' = the first pass (ours: tracing and "
       f"compiling its programs, 'programs' of them), 'seconds' = the median of {repeats} "
       f"passes after it; 'same as ours' compares with ours (greedy) or ours_beam_exact (beam "
       f"{beam_size}); beam 'stopping': ours exact / heuristic (`decoding.beam_search`), "
       "transformers its default (early_stopping=False), CTranslate2 its default (patience 1: "
       "K hypotheses finished)"),
      (f"{'method':<7} {'implementation':<20} {'stopping':>10} {'first call s':>12} "
       f"{'seconds':>8} {'sent/s':>8} {'words out':>9} {'same as ours':>12} {'programs':>8} "
       f"{'load':>10}")]
  for method in methods:
    reference = results[method, REFERENCE[method]]["outputs"]
    for impl in ECOSYSTEM[method]:
      if (method, impl) not in results:
        continue
      r = results[method, impl]
      same = sum(a == b for a, b in zip(r["outputs"], reference))
      matching = f"{same}/{r['sentences']}"
      stopping = "-" if method == "greedy" else BEAM_STOPPING[impl]
      programs = "-" if r["compilations"] is None else r["compilations"]
      lines.append(
          f"{method:<7} {impl:<20} {stopping:>10} {r['first_s']:>12.2f} {r['seconds']:>8.2f} "
          f"{r['sentences'] / r['seconds']:>8.1f} {r['output_words']:>9} "
          f"{matching:>12} {programs:>8} {r['load_before']:>4.2f}/"
          f"{r['load_after']:<4.2f}{'  LOADED' if r['loaded'] else ''}")
  for method in methods:
    rows = [i for i in ECOSYSTEM[method] if (method, i) in results]
    parts = []
    for ours in (i for i in rows if i.startswith("ours") and i != "ours_nocache"):
      # The no-cache row decodes with the "exact" rule: compare it with the cached one only.
      others = [i for i in rows if not i.startswith("ours") or (
          i == "ours_nocache" and (method == "greedy" or BEAM_STOPPING[ours] == "exact"))]
      parts.append(f"{ours}: " + (", ".join(
          f"{ours_vs(results[method, ours], results[method, i])} {i}" for i in others)
                                  or "no other row measured"))
    name = "greedy" if method == "greedy" else f"beam {beam_size}"
    lines.append(f"ratio of our sentences/s ({name}): " + "; ".join(parts))
  return lines


def ours_vs(ours: dict, other: dict) -> str:
  if ours["loaded"] or other["loaded"]:
    return "not measured (load above the limit) vs"
  return f"{other['seconds'] / ours['seconds']:.2f}x"


if __name__ == "__main__":
  app.run(main)
