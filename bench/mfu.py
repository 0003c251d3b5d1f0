"""Accelerator training benchmark: model FLOPs utilization (MFU) and input-pipeline idle time.

Used by `bench/train_step.py --device=gpu` (or `--smoke`, which runs every line of this module
on a CPU with tiny shapes). MFU = counted model FLOPs per step
(`bench/flops.py` `encoder_decoder_train_flops`: matmuls only, forward x 3) / measured step
time / the bf16 matmul rate this device reaches on a large square matmul, measured here as well.
"""

import collections
import dataclasses
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

import common
import flops as flops_lib
import jax_runner


def measure_matmul_rate(size: int, dtype: str = "bfloat16", repeats: int = 10) -> float:
  """FLOP/s of a jitted (size x size) @ (size x size) matmul on the default device.

  bf16 inputs and output with float32 accumulation (what the model's bf16 matmuls do); median
  of `repeats` timed calls after a warm-up call, each call synced.

  Args:
    size: n of the n x n x n product (8192 fills an H100).
    dtype: input and output dtype.
    repeats: timed calls.

  Returns:
    2 n^3 / median seconds.
  """
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(keys[1], (size, size), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(
      dtype))
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2.0 * size**3 / statistics.median(times)


@dataclasses.dataclass
class MfuResult:
  """One configuration's accelerator figures."""

  name: str  # CONFIGS key.
  attention_impl: str  # Attention kernel actually used ("cudnn" or "xla").
  attention_note: str  # Why "xla" was used where "cudnn" was asked, else "".
  tokens: int  # B * (S + T) per step.
  flops: int  # Model FLOPs per training step.
  compile_s: float  # Trace + compile.
  step_s: float  # Wall time per step of back-to-back steps, one sync at the end.
  synced_step_s: float  # Median wall time of single steps, each synced.
  traces: int  # Times the step was traced (1 = no retracing).
  recompiles: int  # XLA compilations during the timed steps (0 = none).
  # Device memory high-water mark of the process so far, if the backend reports it (configs
  # run smallest first, so each figure is that config's own peak).
  peak_bytes: int | None


def _device_peak_bytes(device: jax.Device) -> int | None:
  stats = device.memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def build_runner(shape: dict, attention_impl: str) -> tuple[jax_runner.JaxRunner, str, float]:
  """A compiled bf16 runner, falling back to the "xla" attention path if "cudnn" fails.

  Returns:
    (runner, note: "" or the reason for the fallback, compile seconds).
  """
  runner = jax_runner.JaxRunner(shape, dtype="bfloat16", attention_impl=attention_impl)
  try:
    return runner, "", runner.compile()
  except Exception as e:  # pylint: disable=broad-except
    runner.close()
    if attention_impl == "xla":
      raise
    note = f"{attention_impl} failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
  runner = jax_runner.JaxRunner(shape, dtype="bfloat16", attention_impl="xla")
  return runner, note, runner.compile()


def run_mfu(name: str, *, steps: int, warmup: int, attention_impl: str,
            batch_size: int | None = None) -> tuple[MfuResult, jax_runner.JaxRunner]:
  """Times the bf16 train step of CONFIGS[name] and counts its FLOPs.

  Args:
    name: CONFIGS key.
    steps: timed steps (back-to-back, then the same number synced one by one).
    warmup: untimed steps after compilation.
    attention_impl: "cudnn" on GPUs ("xla" is used if cuDNN rejects the shapes), else "xla".
    batch_size: overrides the configuration's B.

  Returns:
    (the figures, the runner, kept for the input-pipeline measurement).
  """
  shape = dict(common.CONFIGS[name])
  if batch_size:
    shape["batch"] = batch_size
  runner, note, compile_s = build_runner(shape, attention_impl)
  for _ in range(warmup):
    runner.step()
  runner.sync()
  compiles = runner.backend_compiles
  start = time.perf_counter()
  for _ in range(steps):  # No host sync inside: dispatch runs ahead of the device.
    runner.step()
  runner.sync()
  step_s = (time.perf_counter() - start) / steps
  synced = statistics.median(common.timed_steps(runner, steps))
  flops = flops_lib.encoder_decoder_train_flops(runner.config, shape["batch"], shape["src"],
                                                shape["tgt"])
  result = MfuResult(
      name=name, attention_impl=runner.config.attention_impl, attention_note=note,
      tokens=shape["batch"] * (shape["src"] + shape["tgt"]), flops=flops,
      compile_s=compile_s, step_s=step_s, synced_step_s=synced, traces=runner.traces,
      recompiles=runner.backend_compiles - compiles,
      peak_bytes=_device_peak_bytes(runner.device))
  return result, runner


@dataclasses.dataclass
class IdleResult:
  """Device idle time when the batches come from the input pipeline."""

  steps: int  # Timed steps of each loop.
  preplaced_s: float  # Seconds per step, batches already on the device.
  pipeline_s: float  # Seconds per step, batches from the pipeline as the training loop does.
  wait_s: float  # Seconds per step the host spent in next(iterator) and the transfer.
  traces: int  # Trace count of the step after both loops (1 = pipeline batches reused it).
  recompiles: int  # XLA compilations while fed by the pipeline (0 = none).

  @property
  def idle_fraction(self) -> float:
    """Share of the pipeline loop's time the device had no step to run."""
    return max(0.0, 1.0 - self.preplaced_s / self.pipeline_s)


def _data_module():
  """`transformer.data`, imported on first use: it needs grain and tensorflow-datasets, which
  an accelerator image may lack; the MFU figures need neither."""
  from transformer import data  # pylint: disable=g-import-not-at-top

  return data


def pipeline_config(shape: dict, dataset: str, manual_dir: str | None, data_dir: str):
  """A packed `transformer.data.DataConfig` whose one batch shape is the runner's (B, L)."""
  data = _data_module()
  if shape["src"] != shape["tgt"]:
    raise ValueError(f"the pipeline packs S = T; got S={shape['src']} T={shape['tgt']}")
  length = shape["src"]
  return data.DataConfig(
      dataset=dataset, manual_dir=manual_dir, data_dir=data_dir, max_len=length,
      tokens_per_batch=shape["batch"] * length, packing=True,
      synthetic_length=length - 1, synthetic_vocab=min(32, shape["vocab"] - 8))


def measure_input_idle(runner: jax_runner.JaxRunner, config, steps: int) -> IdleResult:
  """Step loop fed by `transformer.data` against the same loop on a pre-placed batch.

  The pipeline loop is the training loop's: `next(iterator)`, copy to the device, dispatch the
  step, no host sync until the end, so the next batch is read and copied while the device runs
  the current step. The difference in time per step is the time the device waited for input.

  Args:
    runner: a compiled runner whose batch shape is the pipeline's single packed shape.
    config: from `pipeline_config`.
    steps: steps per loop.

  Returns:
    The timings.
  """
  data = _data_module()
  with tempfile.TemporaryDirectory() as workdir:
    tokenizer = data.get_tokenizer(config, workdir)
    if tokenizer.vocab_size > runner.config.vocab_size:
      raise ValueError(f"pipeline vocabulary {tokenizer.vocab_size} exceeds the model's "
                       f"{runner.config.vocab_size}")
    (rows, length), = data.train_batch_shapes(config)
    if (rows, length) != (runner.shape["batch"], runner.shape["src"]):
      raise ValueError(f"pipeline batches are {(rows, length)}, the step was compiled for "
                       f"{(runner.shape['batch'], runner.shape['src'])}")
    iterator = data.make_train_iterator(config, tokenizer)
    compiles = runner.backend_compiles
    for _ in range(3):  # Thread start-up and the first plan are not the steady state.
      runner.step(runner.put(next(iterator)))
    runner.sync()
    start = time.perf_counter()
    for _ in range(steps):
      runner.step()
    runner.sync()
    preplaced = (time.perf_counter() - start) / steps
    waited = 0.0
    start = time.perf_counter()
    for _ in range(steps):
      fetch = time.perf_counter()
      batch = runner.put(next(iterator))
      waited += time.perf_counter() - fetch
      runner.step(batch)
    runner.sync()
    fed = (time.perf_counter() - start) / steps
  return IdleResult(steps=steps, preplaced_s=preplaced, pipeline_s=fed, wait_s=waited / steps,
                    traces=runner.traces, recompiles=runner.backend_compiles - compiles)


def format_report(device: jax.Device, matmul_size: int, matmul_rate: float,
                  results: list[MfuResult], idle: dict[str, IdleResult | str]) -> list[str]:
  """The printed table; the last line is the MFU ratio line."""
  lines = [f"device: {device.device_kind} ({device.platform}); bf16 matmul "
           f"{matmul_size}^3 measured: {matmul_rate / 1e12:,.1f} TFLOP/s",
           f"{'config':<9} {'attention':<9} {'tok/step':>9} {'TFLOP/step':>10} {'ms/step':>8} "
           f"{'synced ms':>9} {'tok/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'compile s':>9} "
           f"{'traces':>6} {'recomp':>6} {'peak GiB':>8}"]
  for r in results:
    rate = r.flops / r.step_s
    peak = f"{r.peak_bytes / 2**30:>8.2f}" if r.peak_bytes else f"{'-':>8}"
    lines.append(
        f"{r.name:<9} {r.attention_impl:<9} {r.tokens:>9,} {r.flops / 1e12:>10.3f} "
        f"{1e3 * r.step_s:>8.1f} {1e3 * r.synced_step_s:>9.1f} {r.tokens / r.step_s:>10,.0f} "
        f"{rate / 1e12:>8.1f} {rate / matmul_rate:>6.1%} {r.compile_s:>9.1f} "
        f"{r.traces:>6} {r.recompiles:>6} {peak}")
    if r.attention_note:
      lines.append(f"  note: {r.attention_note}")
  for name, value in idle.items():
    if isinstance(value, str):
      lines.append(f"input pipeline ({name}): not measured: {value}")
      continue
    lines.append(
        f"input pipeline ({name}, {value.steps} steps): pre-placed batch "
        f"{1e3 * value.preplaced_s:.1f} ms/step, pipeline-fed {1e3 * value.pipeline_s:.1f} "
        f"ms/step, host in next()+transfer {1e3 * value.wait_s:.1f} ms/step, device idle "
        f"{value.idle_fraction:.1%}; traces {value.traces}, compilations {value.recompiles}")
  lines.append("MFU (model FLOPs / step time / measured bf16 matmul rate): " + ", ".join(
      f"{r.name} {r.flops / r.step_s / matmul_rate:.1%}" for r in results))
  return lines


def run(names: list[str], *, steps: int, warmup: int, matmul_size: int, attention_impl: str,
        batch_size: int | None, pipeline_dataset: str | None, manual_dir: str | None,
        pipeline_steps: int) -> list[str]:
  """Every measurement of the accelerator benchmark; returns the report lines.

  Args:
    names: CONFIGS keys.
    steps: timed steps per configuration.
    warmup: untimed steps after compilation.
    matmul_size: n of the matmul-rate measurement.
    attention_impl: "cudnn" or "xla".
    batch_size: overrides every configuration's B.
    pipeline_dataset: `DataConfig.dataset` feeding the idle-time measurement (None skips it).
    manual_dir: raw files of that dataset (Multi30k), if it needs them.
    pipeline_steps: steps of each idle-time loop.
  """
  device = jax.devices()[0]
  matmul_rate = measure_matmul_rate(matmul_size)
  results, idle = [], collections.OrderedDict()
  for name in names:
    result, runner = run_mfu(name, steps=steps, warmup=warmup, attention_impl=attention_impl,
                             batch_size=batch_size)
    results.append(result)
    if pipeline_dataset:
      with tempfile.TemporaryDirectory() as data_dir:
        try:
          config = pipeline_config(runner.shape, pipeline_dataset, manual_dir,
                                   os.path.join(data_dir, "tfds"))
          idle[name] = measure_input_idle(runner, config, pipeline_steps)
        except (ImportError, OSError, ValueError, RuntimeError) as e:
          idle[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    runner.close()
    del runner
  return format_report(device, matmul_size, matmul_rate, results, idle)

