"""Training-step benchmark: our Transformer against `torch.nn.Transformer` and the Flax WMT
example's Transformer on the CPU, and model FLOPs utilization (MFU) with bf16 compute on an
accelerator.

  python bench/train_step.py                        # CPU: small and base, every peer, 1 round
  python bench/train_step.py --configs=small --rounds=2
  python bench/train_step.py --cpu_dtype=bfloat16   # CPU in bf16: ours, torch under autocast
  python bench/train_step.py --peers= --ab_roots=before=/tmp/main_before  # A/B of a change
  python bench/train_step.py --device=gpu --manual_dir=runs/multi30k   # GPU: base and big, MFU
  python bench/train_step.py --smoke                # every accelerator code path, tiny, any host
  python bench/train_step.py --configs=small --peers= --profile_dir=/tmp/prof   # + a trace

(from the repository root, with the package installed or PYTHONPATH=.).

CPU method. Every implementation runs in its own worker process (`--worker=...`), one after
the other, never two at once: two frameworks in one process, or beside another busy process,
fight over the cores and measure that fight, not their speed (an earlier version of this
script alternated our step and torch's in one process on a machine with a load average of
5-11, and reported 8-11x torch where the truth on an idle machine was 1.2-1.3x). Before each
worker the script waits up to `--load_wait` seconds for the 1-minute load average to fall to
`--max_load`; it prints the load before and after each worker, and a row measured with the
load above `--max_load` at its start is marked LOADED and left out of the ratios.

One step = forward + backward + Adam (beta2 0.98, eps 1e-9), dropout 0.1, label smoothing 0.1,
shared source/target embedding tied to the output layer, post-LN, ReLU, float32, on random
unpadded batches; tokens/s = B * (S + T) / median step time (each step synced). With
`--cpu_dtype=bfloat16` every implementation computes in bf16 with float32 parameters (ours:
`dtype="bfloat16"`; torch: forward and loss under `torch.autocast("cpu", torch.bfloat16)`, the
backward outside it, as torch's AMP does), the matmul rate is the bf16 one, and the Flax WMT
peer, whose script computes in float32 only, is skipped with a note.
- ours: `transformer.training.steps.train_step` through `bench/jax_runner.py`, jitted once with
  the state donated; the worker fails if the step was traced more than once or XLA compiled
  anything during the timed steps.
- torch: `torch.nn.Transformer` eager, `--threads` intra-op threads (2, the machine's cores),
  built by `TorchRunner` below to the same shapes.
- flax_wmt: the Linen Transformer of the Flax repository's `examples/wmt`, jitted, through
  `../shared/peers/bench_flax_wmt.py` when that file exists (`--peers_dir`); skipped with a
  note otherwise. It is pre-LN and also drops out attention weights (the example's defaults).
Peak memory is each worker process's peak resident set (`ru_maxrss` from `wait4`, the same
measure for every implementation; the parent imports neither framework).

FLOPs. Model FLOPs per step count matrix multiplications only (2 per multiply-add) and the
backward pass as twice the forward (`bench/flops.py` `encoder_decoder_train_flops`):

  step FLOPs = 3 * [ L_enc * (8 B S D^2 + 4 B S^2 D + 4 B S D F)
                   + L_dec * (8 B T D^2 + 4 B T^2 D            # causal self-attention
                              + 4 B T D^2 + 4 B S D^2 + 4 B T S D   # cross-attention
                              + 4 B T D F)
                   + 2 B T D V ]                                # tied output layer

that is 6 FLOPs per weight per token on its side (encoder weights x source tokens, decoder
weights x target tokens, cross-attention K/V weights x source tokens), plus the attention
scores and weighted values (full T x S matrices), plus the tied output layer; embeddings,
norms, softmax, dropout and the optimizer are not counted. The same count serves every
implementation (same shapes, same architecture). Each run also measures the machine's float32
matmul rate (a jitted `--matmul_size` square matmul, in its own worker, before the first and
after the last configuration) and prints achieved model FLOP/s and their percentage of that
rate: on a 2-core machine this says how close to the hardware a step is, across machines that
differ (some lack AVX-512) where raw tokens/s do not compare.

Profile (`--profile_dir=DIR`): after its timed steps, ours runs `--profile_steps` more steps
(untimed; synced one by one, each marked as a step) under `jax.profiler` and writes the trace to
DIR/plugins/profile/<time>/ (`tensorboard --logdir DIR`, Profile tab); on an accelerator, of
the first configuration, in a runner built again after the benchmark.

GPU (`--device=gpu`, the default where JAX has one): the paper's base and big models in bf16
compute (float32 parameters, float32 softmax, norms, logits and loss) with cuDNN fused attention,
about 25k source + 25k target tokens per step; see `bench/mfu.py`. The last line is the MFU.
"""

import contextlib
import io
import json
import os
import runpy
import statistics
import sys

from absl import app
from absl import flags

import common

_CONFIGS = flags.DEFINE_list(
    "configs", None, "Configurations (common.CONFIGS keys); default small,base on the CPU, "
    "gpu_base,gpu_big on a GPU, smoke with --smoke.")
_DEVICE = flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"],
                            "cpu: float32 against peers; gpu: bf16 MFU; auto: gpu if JAX has one.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Run the accelerator path with tiny shapes on any device (CPU included).")
_STEPS = flags.DEFINE_integer("steps", 15, "Timed steps per worker (>= 15; median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps per worker after compilation.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Rounds over every implementation and config.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads.")
_PEERS = flags.DEFINE_list("peers", ["torch", "flax_wmt"], "Peers to time: torch, flax_wmt.")
_PEERS_DIR = flags.DEFINE_string(
    "peers_dir", os.path.join("..", "shared", "peers"),
    "Directory of bench_flax_wmt.py and flax_wmt/ (the Flax WMT peer); skipped if absent.")
_AB_ROOTS = flags.DEFINE_list(
    "ab_roots", [], "LABEL=DIR,...: also time our step with the `transformer` package of each "
    "checkout DIR (row 'ours@LABEL'), for A/B comparisons of changes; each in its own process.")
_MAX_LOAD = flags.DEFINE_float("max_load", 1.5, "Highest 1-minute load average to start a worker.")
_LOAD_WAIT = flags.DEFINE_integer("load_wait", 180, "Seconds to wait for the load to fall.")
_MATMUL_CPU = flags.DEFINE_integer("matmul_size_cpu", 2048, "CPU: n of the square matmul.")
_CPU_DTYPE = flags.DEFINE_enum(
    "cpu_dtype", "float32", ["float32", "bfloat16"],
    "CPU: compute dtype of every implementation (bfloat16: ours with float32 parameters, torch "
    "under autocast; the Flax WMT peer computes in float32 only and is skipped).")
_JSON = flags.DEFINE_string("json", None, "Also write every row as JSON to this file.")
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
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Also trace --profile_steps untimed steps of ours with jax.profiler into "
    "this TensorBoard log directory (Profile tab).")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 5, "Steps traced with --profile_dir.")
_WORKER = flags.DEFINE_string(
    "worker", None, "Internal: 'ours', 'torch', 'flax_wmt' or 'matmul'.")
_WORKER_CONFIG = flags.DEFINE_string("worker_config", "small", "Internal: config of the worker.")

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_BENCH_DIR)


class TorchRunner:
  """`torch.nn.Transformer` with a shared, sqrt(D)-scaled, tied embedding and sinusoids."""

  def __init__(self, cfg: dict, threads: int, dtype: str = "float32"):
    import contextlib  # pylint: disable=g-import-not-at-top
    import math  # pylint: disable=g-import-not-at-top

    import torch  # pylint: disable=g-import-not-at-top

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    self.torch = torch
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
    bos = torch.full((self.targets.shape[0], 1), 2, dtype=torch.long)
    self.decoder_inputs = torch.cat([bos, self.targets[:, :-1]], dim=1)
    self.causal = torch.nn.Transformer.generate_square_subsequent_mask(cfg["tgt"])
    self.loss = None
    self.compute_dtype = None  # The logits' dtype in the last step.
    # bfloat16: PyTorch's mixed precision, the forward and the loss under CPU autocast (float32
    # parameters, bf16 matmuls), the backward outside it, as torch's AMP recipe does.
    self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if (
        dtype == "bfloat16") else contextlib.nullcontext

  def _embed(self, ids):
    x = self.embedding(ids) * self.scale + self.positions[:ids.shape[1]]
    return self.dropout(x)

  def compile(self) -> float:
    return 0.0  # Eager.

  def step(self) -> None:
    self.net.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self.autocast():
      hidden = self.net(self._embed(self.inputs), self._embed(self.decoder_inputs),
                        tgt_mask=self.causal, tgt_is_causal=True)
      logits = hidden @ self.embedding.weight.T  # (B, T, V), tied output layer
      loss = self.torch.nn.functional.cross_entropy(
          logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1), label_smoothing=0.1)
    loss.backward()
    self.optimizer.step()
    self.loss = loss
    self.compute_dtype = str(logits.dtype).removeprefix("torch.")

  def sync(self) -> float:
    return float(self.loss.detach())


def profile_steps(runner, log_dir: str, num_steps: int) -> None:
  """Traces `num_steps` steps of a JaxRunner (synced one by one, each a step in the trace)
  into `log_dir`/plugins/profile/<time>/."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.profiler.start_trace(log_dir)
  try:
    for step in range(num_steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        runner.step()
        runner.sync()
  finally:
    jax.profiler.stop_trace()
  print(f"profile of {num_steps} steps written to {log_dir} (tensorboard --logdir {log_dir})",
        file=sys.stderr, flush=True)


def run_step_worker(framework: str, name: str) -> dict:
  """Worker body: build, compile, warm up, time; returns the RESULT dict."""
  shape = common.CONFIGS[name]
  if framework == "ours":
    import jax  # pylint: disable=g-import-not-at-top

    import jax_runner  # pylint: disable=g-import-not-at-top
    from transformer import model as model_lib  # pylint: disable=g-import-not-at-top

    runner = jax_runner.JaxRunner(shape, dtype=_CPU_DTYPE.value, device=jax.devices("cpu")[0])
    extra = dict(jax=jax.__version__, package=os.path.dirname(os.path.dirname(
        model_lib.__file__)), compute_dtype=runner.config.dtype)
  else:
    import torch  # pylint: disable=g-import-not-at-top

    runner = TorchRunner(shape, _THREADS.value, _CPU_DTYPE.value)
    extra = dict(torch=torch.__version__, threads=torch.get_num_threads())
  compile_s = runner.compile()
  common.timed_steps(runner, _WARMUP.value)
  compiles = getattr(runner, "backend_compiles", 0)
  times = common.timed_steps(runner, _STEPS.value)
  if framework == "ours":
    recompiles = runner.backend_compiles - compiles
    if runner.traces != 1 or recompiles:
      raise RuntimeError(f"our step was traced {runner.traces} times (expected 1) and XLA "
                         f"compiled {recompiles} programs during the timed steps (expected 0)")
    if _PROFILE_DIR.value:
      profile_steps(runner, _PROFILE_DIR.value, _PROFILE_STEPS.value)
      extra.update(profile_dir=_PROFILE_DIR.value)
    runner.close()
    extra.update(traces=runner.traces, recompiles=recompiles)
  else:
    extra.update(compute_dtype=runner.compute_dtype)  # Of the logits, in the last step.
  return dict(step_s=statistics.median(times), compile_s=compile_s, loss=runner.sync(), **extra)


def run_matmul_worker(size: int) -> dict:
  """Worker body: FLOP/s of a jitted (size x size) @ (size x size) on the CPU, in `--cpu_dtype`
  (bfloat16: bf16 inputs and output, float32 accumulation, like the model's matmuls)."""
  import mfu  # pylint: disable=g-import-not-at-top

  return dict(flops_per_s=mfu.measure_matmul_rate(size, dtype=_CPU_DTYPE.value, repeats=20))


def _env(package_root: str) -> dict:
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      [package_root, _BENCH_DIR, os.environ.get("PYTHONPATH", "")]))


def _worker_argv(worker: str, name: str) -> list[str]:
  return [sys.executable, os.path.abspath(__file__), f"--worker={worker}",
          f"--worker_config={name}", f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
          f"--threads={_THREADS.value}", f"--matmul_size_cpu={_MATMUL_CPU.value}",
          f"--cpu_dtype={_CPU_DTYPE.value}",
          f"--peers_dir={os.path.abspath(_PEERS_DIR.value)}"] + (
              [f"--profile_dir={os.path.abspath(_PROFILE_DIR.value)}",
               f"--profile_steps={_PROFILE_STEPS.value}"] if _PROFILE_DIR.value else [])


def _run_worker(argv: list[str], env: dict, label: str) -> dict:
  return common.run_worker(argv, label=label, max_load=_MAX_LOAD.value,
                           wait_s=_LOAD_WAIT.value, env=env, cwd=_REPO_ROOT)


def measure_matmul() -> float:
  r = _run_worker(_worker_argv("matmul", "small"), _env(_REPO_ROOT),
                  f"matmul {_MATMUL_CPU.value}^3 {_CPU_DTYPE.value}")
  return r["flops_per_s"]


def implementations() -> list[tuple[str, str, str]]:
  """(row label, worker, package root) of each implementation to time."""
  impls = [("ours", "ours", _REPO_ROOT)]
  for entry in _AB_ROOTS.value:
    label, _, root = entry.partition("=")
    impls.append((f"ours@{label}", "ours", os.path.abspath(root)))
  if "torch" in _PEERS.value:
    impls.append((f"torch{_THREADS.value}", "torch", _REPO_ROOT))
  if ("flax_wmt" in _PEERS.value and os.path.isfile(_flax_wmt_script())
      and _CPU_DTYPE.value == "float32"):
    impls.append(("flax_wmt", "flax_wmt", _REPO_ROOT))
  return impls


def _flax_wmt_script() -> str:
  return os.path.join(os.path.abspath(_PEERS_DIR.value), "bench_flax_wmt.py")


def measure(label: str, worker: str, package_root: str, name: str) -> dict:
  """One implementation on one configuration, in its own process."""
  r = _run_worker(_worker_argv(worker, name), _env(package_root), f"{label} {name}")
  if worker == "flax_wmt":
    r["step_s"] = r["step_ms_median"] / 1e3
  return r


def run_flax_wmt_worker(name: str) -> dict:
  """Worker body: the peer script `bench_flax_wmt.py`, run in this process; its RESULT dict.

  Run through this worker (not as its own command) so that its peak memory is read the same
  way as every other implementation's.
  """
  script = _flax_wmt_script()
  os.environ.setdefault("FLAX_WMT_DIR", os.path.join(os.path.dirname(script), "flax_wmt"))
  sys.argv = [script, "--config", name, "--warmup", str(_WARMUP.value),
              "--steps", str(_STEPS.value)]
  captured = io.StringIO()
  with contextlib.redirect_stdout(captured):
    runpy.run_path(script, run_name="__main__")
  lines = [line for line in captured.getvalue().splitlines() if line.startswith("RESULT ")]
  if not lines:
    raise RuntimeError(f"{script} printed no RESULT line:\n{captured.getvalue()[-2000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def run_cpu(names: list[str]) -> list[dict]:
  """Every implementation on every configuration, one process at a time; prints the table."""
  import flops as flops_lib  # pylint: disable=g-import-not-at-top

  print(f"cpus={os.cpu_count()} load average={os.getloadavg()} XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}; steps={_STEPS.value} (median) after "
        f"warmup={_WARMUP.value}, rounds={_ROUNDS.value}; {_CPU_DTYPE.value}; dropout 0.1, "
        "label smoothing 0.1, Adam; each implementation in its own process, one at a time")
  if "flax_wmt" in _PEERS.value and not os.path.isfile(_flax_wmt_script()):
    print(f"note: {_flax_wmt_script()} not found: the Flax WMT peer is skipped")
  elif "flax_wmt" in _PEERS.value and _CPU_DTYPE.value != "float32":
    print(f"note: the Flax WMT peer computes in float32 only: skipped at {_CPU_DTYPE.value}")
  rows = []
  matmul = [measure_matmul()]
  for round_index in range(_ROUNDS.value):
    for name in names:
      shape = common.CONFIGS[name]
      flops = flops_lib.encoder_decoder_train_flops(
          _model_config(shape), shape["batch"], shape["src"], shape["tgt"])
      for label, worker, package_root in implementations():
        r = measure(label, worker, package_root, name)
        rows.append(dict(r, impl=label, config=name, round=round_index, flops=flops,
                         tokens=shape["batch"] * (shape["src"] + shape["tgt"])))
  matmul.append(measure_matmul())
  rate = statistics.mean(matmul)
  print(f"{_CPU_DTYPE.value} matmul rate ({_MATMUL_CPU.value}^3, jitted): "
        + " / ".join(f"{m / 1e9:.1f}" for m in matmul) + " GFLOP/s (before / after)")
  print(f"{'config':<6} {'impl':<9} {'round':>5} {'tok/s':>8} {'step ms':>8} {'GFLOP/s':>8} "
        f"{'% matmul':>8} {'peak MiB':>8} {'compile s':>9} {'load':>9}")
  for r in rows:
    achieved = r["flops"] / r["step_s"]
    r.update(tokens_per_s=r["tokens"] / r["step_s"], flops_per_s=achieved,
             matmul_fraction=achieved / rate)
    print(f"{r['config']:<6} {r['impl']:<9} {r['round']:>5} {r['tokens_per_s']:>8,.0f} "
          f"{1e3 * r['step_s']:>8.1f} {achieved / 1e9:>8.1f} {100 * achieved / rate:>7.1f}% "
          f"{r.get('peak_rss_mib', float('nan')):>8.0f} {r.get('compile_s', 0.0):>9.1f} "
          f"{r['load_before']:>4.2f}/{r['load_after']:<4.2f}"
          f"{'  LOADED' if r['loaded'] else ''}")
  print(common.ratio_line(rows, names))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(dict(matmul_flops_per_s=matmul, rows=rows), f, indent=1)
  return rows


def _model_config(shape: dict):
  import jax_runner  # pylint: disable=g-import-not-at-top

  return jax_runner.model_config(shape)


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
  if _PROFILE_DIR.value:
    shape = dict(common.CONFIGS[names[0]])
    if _BATCH.value:
      shape["batch"] = _BATCH.value
    runner, _, _ = mfu.build_runner(shape, _ATTENTION.value if on_gpu else "xla")
    common.timed_steps(runner, max(_WARMUP.value, 1))
    profile_steps(runner, _PROFILE_DIR.value, _PROFILE_STEPS.value)
    runner.close()


def run_worker(worker: str, name: str) -> None:
  """Entry of a worker process: prints one RESULT line, with the process's peak memory."""
  if worker == "matmul":
    result = run_matmul_worker(_MATMUL_CPU.value)
  elif worker in ("ours", "torch"):
    result = run_step_worker(worker, name)
  elif worker == "flax_wmt":
    result = run_flax_wmt_worker(name)
  else:
    raise ValueError(f"unknown worker {worker!r}")
  result["peak_rss_mib"] = common.peak_rss_mib()
  print("RESULT " + json.dumps(result), flush=True)


def main(argv):
  del argv
  if _WORKER.value:
    run_worker(_WORKER.value, _WORKER_CONFIG.value)
    return
  import jax  # pylint: disable=g-import-not-at-top

  accelerator = _SMOKE.value or _DEVICE.value == "gpu" or (
      _DEVICE.value == "auto" and jax.default_backend() == "gpu")
  if _DEVICE.value == "gpu" and jax.default_backend() != "gpu" and not _SMOKE.value:
    raise app.UsageError(f"--device=gpu but JAX's backend is {jax.default_backend()!r}; use "
                         "--smoke to exercise the accelerator path on a CPU")
  default = ["smoke"] if _SMOKE.value else (["gpu_base", "gpu_big"] if accelerator
                                            else ["small", "base"])
  names = _CONFIGS.value or default
  for name in names:
    if name not in common.CONFIGS:
      raise app.UsageError(f"unknown config {name!r}; choose from {sorted(common.CONFIGS)}")
  for entry in _AB_ROOTS.value:
    label, _, root = entry.partition("=")
    if not label or not os.path.isdir(os.path.join(root, "transformer")):
      raise app.UsageError(f"--ab_roots entry {entry!r} is not LABEL=DIR with DIR/transformer")
  unknown = set(_PEERS.value) - {"torch", "flax_wmt", ""}
  if unknown:
    raise app.UsageError(f"unknown peers {sorted(unknown)}; choose from torch, flax_wmt")
  if _PROFILE_STEPS.value < 1:
    raise app.UsageError(f"--profile_steps must be >= 1, got {_PROFILE_STEPS.value}")
  if _STEPS.value < 15 and not _SMOKE.value:
    raise app.UsageError(f"--steps must be >= 15, got {_STEPS.value}")
  if accelerator:
    run_accelerator(names)
  else:
    run_cpu(names)


if __name__ == "__main__":
  app.run(main)
