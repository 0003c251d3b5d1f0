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
Both are jitted once; the outputs of the two are compared. The last line prints the ratios.

`--device` picks the backend (default: JAX's default, i.e. the GPU where there is one);
`--dtype=bfloat16` decodes with bf16 compute, `--precision=highest` makes float32 matmuls on a
GPU exact float32 (no TF32), so that cached and no-cache outputs can be compared token for token.
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


def make_programs(graphdef, length: int, beam_size: int):
  """Jitted (params, inputs) -> outputs for the four methods."""
  def with_model(fn):
    return jax.jit(lambda params, inputs: fn(nnx.merge(graphdef, params), inputs))

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

  return {"greedy": (with_model(ours_greedy), with_model(base_greedy)),
          f"beam{beam_size}": (with_model(ours_beam), with_model(base_beam))}


def run(program, params, batches) -> tuple[float, list]:
  """Seconds to decode every batch (synced at the end) and the outputs."""
  start = time.perf_counter()
  outputs = [program(params, inputs) for inputs in batches]
  jax.block_until_ready(outputs)
  return time.perf_counter() - start, outputs


def sequences_of(output) -> np.ndarray:
  return np.asarray(output[0] if isinstance(output, tuple) else output)


def main(argv):
  del argv
  try:
    device = jax.devices()[0] if _DEVICE.value == "auto" else jax.devices(_DEVICE.value)[0]
  except RuntimeError as e:
    raise ValueError(f"--device={_DEVICE.value}: JAX has no such backend here ({e})") from e
  with jax.default_device(device), jax.default_matmul_precision(_PRECISION.value):
    run_benchmark(device)


def run_benchmark(device: jax.Device) -> None:
  """Builds the data and model on `device` and prints the table and the ratio line."""
  length = _MAX_DECODE_LEN.value
  with tempfile.TemporaryDirectory() as tmp:
    config = data.DataConfig(dataset="multi30k", manual_dir=_MANUAL_DIR.value,
                             data_dir=f"{tmp}/tfds", eval_batch_size=_BATCH.value)
    tokenizer = data.get_tokenizer(config, f"{tmp}/workdir")
    evalset = data.make_eval_dataset(config, tokenizer, "validation")
  all_batches = list(evalset.batches)
  batches = [jnp.asarray(b["inputs"]) for b in all_batches[:_NUM_BATCHES.value]]
  rows = [int((np.asarray(b) != 0).any(axis=1).sum()) for b in batches]
  model_cfg = model_lib.TransformerConfig.small(
      tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
      eos_id=tokenizer.eos_id, dtype=_DTYPE.value)
  model = model_lib.EncoderDecoder(model_cfg, rngs=nnx.Rngs(params=0))
  graphdef, params = nnx.split(model, nnx.Param)
  print(f"jax {jax.__version__} device={device.device_kind} ({device.platform}); "
        f"dtype={_DTYPE.value}, matmul precision={_PRECISION.value}; cpus={os.cpu_count()} "
        f"load average={os.getloadavg()}")
  print(f"Multi30k validation: {len(all_batches)} batches of {batches[0].shape}; timing "
        f"{len(batches)} batches = {sum(rows)} sentences; model small (D={model_cfg.d_model}, "
        f"{model_cfg.num_encoder_layers}+{model_cfg.num_decoder_layers} layers, V="
        f"{model_cfg.vocab_size}), random weights, max_decode_len={length} (fixed), "
        f"median of {_REPEATS.value} alternating passes")
  print(f"{'method':<7} {'impl':<9} {'compile s':>9} {'seconds':>8} {'sent/s':>8} "
        f"{'tok/s':>9} {'same as baseline':>17}")
  ratios = []
  for name, (ours, base) in make_programs(graphdef, length, _BEAM.value).items():
    programs, compile_s, seconds, outputs = {}, {}, {}, {}
    for impl, program in (("cached", ours), ("no-cache", base)):
      start = time.perf_counter()
      programs[impl] = program.lower(params, batches[0]).compile()
      compile_s[impl] = time.perf_counter() - start
      seconds[impl] = []
    for _ in range(_REPEATS.value):  # Alternating, so load changes hit both alike.
      for impl, program in programs.items():
        elapsed, outputs[impl] = run(program, params, batches)
        seconds[impl].append(elapsed)
    timings = {impl: (compile_s[impl], statistics.median(seconds[impl]), outputs[impl])
               for impl in programs}
    ours_out = [sequences_of(o) for o in timings["cached"][2]]
    base_out = [sequences_of(o) for o in timings["no-cache"][2]]
    same = sum(int((a == b).all(axis=1)[:r].sum()) for a, b, r in zip(ours_out, base_out, rows))
    for impl in ("cached", "no-cache"):
      compile_s, elapsed, outputs = timings[impl]
      tokens = sum(int((sequences_of(o)[:r] != 0).sum()) for o, r in zip(outputs, rows))
      print(f"{name:<7} {impl:<9} {compile_s:>9.1f} {elapsed:>8.2f} {sum(rows) / elapsed:>8.1f} "
            f"{tokens / elapsed:>9,.0f} {f'{same}/{sum(rows)}':>17}")
    ratios.append(f"{name} {timings['no-cache'][1] / timings['cached'][1]:.1f}x")
  print("ratio cached/no-cache sentences/s: " + ", ".join(ratios))


if __name__ == "__main__":
  app.run(main)
