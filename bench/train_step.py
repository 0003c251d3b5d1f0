"""Training-step benchmark: our Transformer against `torch.nn.Transformer` on the CPU, and model
FLOPs utilization (MFU) with bf16 compute on an accelerator.

  python bench/train_step.py                      # CPU: both configurations, throughput + memory
  python bench/train_step.py --configs=small --steps=15 --memory=false
  python bench/train_step.py --throughput=false   # CPU: peak memory only
  python bench/train_step.py --device=gpu --manual_dir=runs/multi30k   # GPU: base and big, MFU
  python bench/train_step.py --smoke              # every accelerator code path, tiny, any host

(from the repository root, with the package installed or PYTHONPATH=.).

CPU (`--device=cpu`, the default where JAX has no GPU): one step = forward + backward + Adam
(beta2 0.98, eps 1e-9), dropout 0.1, label smoothing 0.1, shared source/target embedding tied to
the output layer, post-LN, ReLU, float32, on random unpadded batches. Ours is the project's own
`transformer.training.steps.train_step`, jitted once with the state donated; the peer is eager
CPU torch with the same shapes and inputs. Throughput is measured in ONE process, alternating
blocks of steps of the two frameworks so that load from other processes hits both alike;
tokens/s = B * (S + T) / median step time. Peak memory (VmHWM) is measured in a fresh
subprocess per framework and configuration, since one process holding both frameworks would
mix them; both workers return their freed heap to the system after building (and we after
compiling, see `common.release_freed_heap`), and the figures without that are printed too.
The last printed line is the ratio.

GPU (`--device=gpu`, the default where JAX has one): the paper's base and big models in bf16
compute (float32 parameters, float32 softmax, norms, logits and loss) with cuDNN fused attention,
about 25k source + 25k target tokens per step; see `bench/mfu.py`. The last line is the MFU.
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

import common

_CONFIGS = flags.DEFINE_list(
    "configs", None, "Configurations (runner.CONFIGS keys); default small,base on the CPU, "
    "gpu_base,gpu_big on a GPU, smoke with --smoke.")
_DEVICE = flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"],
                            "cpu: float32 against torch; gpu: bf16 MFU; auto: gpu if JAX has one.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Run the accelerator path with tiny shapes on any device (CPU included).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per framework (>= 15).")
_BLOCK = flags.DEFINE_integer("block", 5, "Steps per framework before switching to the other.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after compilation.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads (the issue's setting).")
_ALSO_ONE = flags.DEFINE_bool(
    "also_one_thread", True,
    "Also time torch with 1 thread: on a loaded 2-core machine 2 OpenMP threads can be slower.")
_MEMORY = flags.DEFINE_bool("memory", True, "Also measure peak RSS in one subprocess each.")
_THROUGHPUT = flags.DEFINE_bool("throughput", True, "Measure throughput (else memory only).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Accelerator: override B (0 = the config's).")
_MATMUL = flags.DEFINE_integer("matmul_size", 8192, "Accelerator: n of the n^3 bf16 matmul.")
_ATTENTION = flags.DEFINE_enum(
    "attention_impl", "cudnn", ["cudnn", "xla"],
    "Accelerator attention kernel; cudnn falls back to xla (reported) where cuDNN refuses.")
_PIPELINE = flags.DEFINE_string(
    "pipeline_dataset", "multi30k",
    "Accelerator: DataConfig.dataset feeding the idle-time loop ('' skips it).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "../shared/data/multi30k",
                                  "Raw Multi30k files for the idle-time loop.")
_PIPELINE_STEPS = flags.DEFINE_integer("pipeline_steps", 30, "Steps per idle-time loop.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: 'jax' or 'torch' memory worker.")
_WORKER_CONFIG = flags.DEFINE_string("worker_config", "small", "Internal: config of the worker.")
_RELEASE_HEAP = flags.DEFINE_bool(
    "release_heap", True, "Internal: memory workers return freed heap after building.")


class TorchRunner:
  """`torch.nn.Transformer` with a shared, sqrt(D)-scaled, tied embedding and sinusoids."""

  def __init__(self, cfg: dict, threads: int):
    import math  # pylint: disable=g-import-not-at-top

    import torch  # pylint: disable=g-import-not-at-top

    torch.manual_seed(0)
    self.torch = torch
    self.threads = threads
    d, v = cfg["d_model"], cfg["vocab"]
    self.embedding = torch.nn.Embedding(v, d)
    torch.nn.init.normal_(self.embedding.weight, std=d**-0.5)
    self.net = torch.nn.Transformer(
        d_model=d, nhead=cfg["heads"], num_encoder_layers=cfg["layers"],
        num_decoder_layers=cfg["layers"], dim_feedforward=cfg["d_ff"], dropout=0.1,
        batch_first=True)
    length = max(cfg["src"], cfg["tgt"])
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    angles = pos / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
    table = torch.empty(length, d, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(angles), torch.cos(angles)
    self.positions = table.float()
    self.dropout = torch.nn.Dropout(0.1)
    self.scale = math.sqrt(d)
    parameters = list(self.embedding.parameters()) + list(self.net.parameters())
    self.optimizer = torch.optim.Adam(parameters, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    batch = common.make_batch(cfg)
    self.inputs = torch.from_numpy(batch["inputs"]).long()
    self.targets = torch.from_numpy(batch["targets"]).long()
    targets = batch["targets"]
    bos = torch.full((targets.shape[0], 1), 2, dtype=torch.long)
    self.decoder_inputs = torch.cat([bos, self.targets[:, :-1]], dim=1)
    self.causal = torch.nn.Transformer.generate_square_subsequent_mask(cfg["tgt"])
    self.loss = None

  def _embed(self, ids):
    x = self.embedding(ids) * self.scale + self.positions[:ids.shape[1]]
    return self.dropout(x)

  def step(self) -> None:
    torch = self.torch
    torch.set_num_threads(self.threads)  # Global in torch; two runners may differ.
    self.net.train()
    self.optimizer.zero_grad(set_to_none=True)
    hidden = self.net(self._embed(self.inputs), self._embed(self.decoder_inputs),
                      tgt_mask=self.causal, tgt_is_causal=True)
    logits = hidden @ self.embedding.weight.T  # (B, T, V), tied output layer
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1), label_smoothing=0.1)
    loss.backward()
    self.optimizer.step()
    self.loss = loss

  def sync(self) -> float:
    return float(self.loss.detach())


def run_worker(framework: str, name: str) -> None:
  """Memory worker: build, compile, run a few steps; print JSON with the peak RSS."""
  shape = common.CONFIGS[name]
  if framework == "jax":
    import jax  # pylint: disable=g-import-not-at-top

    import jax_runner  # pylint: disable=g-import-not-at-top

    runner = jax_runner.JaxRunner(shape, device=jax.devices("cpu")[0])
    runner.compile()
  else:
    runner = TorchRunner(shape, _THREADS.value)
  if _RELEASE_HEAP.value:
    common.release_freed_heap()
  common.timed_steps(runner, 6)
  print(json.dumps({"peak_rss_mib": common.peak_rss_mib()}))


def measure_memory(framework: str, name: str, release_heap: bool = True) -> float:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.getcwd(), os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run(
      [sys.executable, __file__, f"--worker={framework}", f"--worker_config={name}",
       f"--threads={_THREADS.value}", f"--release_heap={release_heap}"],
      check=True, capture_output=True, text=True, env=env).stdout
  return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def memory_row(name: str) -> dict:
  """Peak RSS of both frameworks, with and without returning the freed heap."""
  return {f"{framework}_{trim}": measure_memory(framework, name, trim == "trim")
          for framework in ("jax", "torch") for trim in ("trim", "raw")}


def run_config(name: str) -> dict:
  """Interleaved throughput of both frameworks on one configuration."""
  import jax  # pylint: disable=g-import-not-at-top

  import jax_runner  # pylint: disable=g-import-not-at-top

  shape = common.CONFIGS[name]
  tokens = shape["batch"] * (shape["src"] + shape["tgt"])
  ours = jax_runner.JaxRunner(shape, device=jax.devices("cpu")[0])
  compile_s = ours.compile()
  peer = TorchRunner(shape, _THREADS.value)
  runners = [ours, peer] + ([TorchRunner(shape, 1)] if _ALSO_ONE.value else [])
  for runner in runners:
    common.timed_steps(runner, _WARMUP.value)
  times = [[] for _ in runners]
  compiles = ours.backend_compiles
  while len(times[0]) < _STEPS.value:
    n = min(_BLOCK.value, _STEPS.value - len(times[0]))
    for runner, runner_times in zip(runners, times):
      runner_times += common.timed_steps(runner, n)
  if ours.traces != 1 or ours.backend_compiles != compiles:
    raise RuntimeError(f"our step was traced {ours.traces} times (expected 1) and XLA compiled "
                       f"{ours.backend_compiles - compiles} programs during the timed steps "
                       "(expected 0)")
  ours.close()
  medians = [statistics.median(t) for t in times]
  result = dict(
      name=name, tokens=tokens, compile_s=compile_s, traces=ours.traces,
      recompiles=ours.backend_compiles - compiles,
      ours_s=medians[0], peer_s=medians[1], peer1_s=medians[2] if _ALSO_ONE.value else None)
  if _MEMORY.value:
    result.update(memory_row(name))
  return result


def print_memory_table(names: list[str]) -> None:
  t = _THREADS.value
  print(f"{'config':<6} {'ours MiB':>8} {f'torch{t} MiB':>10} {'ours raw':>8} "
        f"{f'torch{t} raw':>10}  (peak RSS, VmHWM; raw = freed heap not returned)")
  for name in names:
    m = memory_row(name)
    print(f"{name:<6} {m['jax_trim']:>8.0f} {m['torch_trim']:>10.0f} {m['jax_raw']:>8.0f} "
          f"{m['torch_raw']:>10.0f}", flush=True)


def run_cpu(names: list[str]) -> None:
  """The CPU comparison against torch; prints the table and the ratio line."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  print(f"jax {jax.__version__} devices={jax.devices()} XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}; torch {torch.__version__} eager, "
        f"threads={_THREADS.value}; cpus={os.cpu_count()} load average={os.getloadavg()}")
  print(f"steps={_STEPS.value} per framework (median), alternating blocks of {_BLOCK.value}, "
        f"warmup={_WARMUP.value}; float32; dropout 0.1, label smoothing 0.1, Adam")
  if not _THROUGHPUT.value:
    print_memory_table(names)
    return
  results = [run_config(name) for name in names]
  t = _THREADS.value
  print(f"{'config':<6} {'ours tok/s':>11} {f'torch{t} tok/s':>12} {'torch1 tok/s':>12} "
        f"{'ours ms':>8} {f'torch{t} ms':>9} {'torch1 ms':>9} {'compile s':>9} {'traces':>6} "
        f"{'recomp':>6} {'ours MiB':>8} {'torch MiB':>9} {'ours raw':>8} {'torch raw':>9}")
  for r in results:
    peer1 = (f"{r['tokens'] / r['peer1_s']:>12,.0f}", f"{1e3 * r['peer1_s']:>9.1f}") if (
        r["peer1_s"]) else (f"{'-':>12}", f"{'-':>9}")
    mem = (f"{r['jax_trim']:>8.0f} {r['torch_trim']:>9.0f} {r['jax_raw']:>8.0f} "
           f"{r['torch_raw']:>9.0f}" if "jax_trim" in r else " ".join(
               [f"{'-':>8}", f"{'-':>9}", f"{'-':>8}", f"{'-':>9}"]))
    print(f"{r['name']:<6} {r['tokens'] / r['ours_s']:>11,.0f} "
          f"{r['tokens'] / r['peer_s']:>12,.0f} {peer1[0]} {1e3 * r['ours_s']:>8.1f} "
          f"{1e3 * r['peer_s']:>9.1f} {peer1[1]} {r['compile_s']:>9.1f} {r['traces']:>6} "
          f"{r['recompiles']:>6} {mem}")
  print(f"load average at the end: {os.getloadavg()}")
  print("ratio ours/torch tokens/s: " + ", ".join(
      f"{r['name']} {r['peer_s'] / r['ours_s']:.2f}x vs {t} threads"
      + (f", {r['peer1_s'] / r['ours_s']:.2f}x vs 1 thread" if r["peer1_s"] else "")
      for r in results))


def run_accelerator(names: list[str]) -> None:
  """The bf16 MFU benchmark (bench/mfu.py); `--smoke` shrinks every size."""
  import jax  # pylint: disable=g-import-not-at-top

  import mfu  # pylint: disable=g-import-not-at-top

  smoke = _SMOKE.value
  on_gpu = jax.default_backend() == "gpu"
  print(f"jax {jax.__version__} devices={jax.devices()}; cpus={os.cpu_count()} "
        f"load average={os.getloadavg()}; bf16 compute, float32 parameters, dropout 0.1, "
        f"label smoothing 0.1, Adam{'; SMOKE (tiny shapes)' if smoke else ''}")
  lines = mfu.run(
      names, steps=_STEPS.value, warmup=_WARMUP.value,
      matmul_size=128 if smoke else _MATMUL.value,
      # cuDNN attention exists on GPUs only; elsewhere the smoke run takes the portable path.
      attention_impl=_ATTENTION.value if on_gpu else "xla",
      batch_size=_BATCH.value or None,
      pipeline_dataset=("synthetic/copy" if smoke else _PIPELINE.value) or None,
      manual_dir=_MANUAL_DIR.value, pipeline_steps=3 if smoke else _PIPELINE_STEPS.value)
  print("\n".join(lines))


def main(argv):
  del argv
  if _WORKER.value:
    run_worker(_WORKER.value, _WORKER_CONFIG.value)
    return
  import jax  # pylint: disable=g-import-not-at-top

  accelerator = _SMOKE.value or _DEVICE.value == "gpu" or (
      _DEVICE.value == "auto" and jax.default_backend() == "gpu")
  if _DEVICE.value == "gpu" and jax.default_backend() != "gpu" and not _SMOKE.value:
    raise ValueError(f"--device=gpu but JAX's backend is {jax.default_backend()!r}; use "
                     "--smoke to exercise the accelerator path on a CPU")
  default = ["smoke"] if _SMOKE.value else (["gpu_base", "gpu_big"] if accelerator
                                            else ["small", "base"])
  names = _CONFIGS.value or default
  for name in names:
    if name not in common.CONFIGS:
      raise ValueError(f"unknown config {name!r}; choose from {sorted(common.CONFIGS)}")
  if _STEPS.value < 15 and not _SMOKE.value:
    raise ValueError(f"--steps must be >= 15, got {_STEPS.value}")
  if accelerator:
    run_accelerator(names)
  else:
    run_cpu(names)


if __name__ == "__main__":
  app.run(main)
