"""Training-step throughput of our Transformer against `torch.nn.Transformer` on the same CPU.

  python bench/train_step.py                      # both configurations, throughput + memory
  python bench/train_step.py --configs=small --steps=15 --memory=false
  python bench/train_step.py --throughput=false   # peak memory only

(from the repository root, with the package installed or PYTHONPATH=.).

One step = forward + backward + Adam (beta2 0.98, eps 1e-9), dropout 0.1, label smoothing 0.1,
shared source/target embedding tied to the output layer, post-LN, ReLU, on random unpadded
batches. Ours is the project's own `transformer.training.steps.train_step`, jitted once with
the state donated; the peer is eager CPU torch with the same shapes and inputs.

Throughput is measured in ONE process, alternating blocks of steps of the two frameworks so
that load from other processes on the machine hits both alike; tokens/s = B * (S + T) / median
step time. Peak memory (max RSS) is measured in a fresh subprocess per framework and config,
since one process holding both frameworks would mix them. The last printed line is the ratio.
"""

import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

CONFIGS = {
    # name: (vocab V, d_model D, heads N, d_ff F, layers per stack, batch B, S, T)
    "small": dict(vocab=8000, d_model=256, heads=4, d_ff=1024, layers=3, batch=32, src=32,
                  tgt=32),
    "base": dict(vocab=32000, d_model=512, heads=8, d_ff=2048, layers=6, batch=16, src=64,
                 tgt=64),
}

_CONFIGS = flags.DEFINE_list("configs", ["small", "base"], "Configurations to run.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per framework (>= 15).")
_BLOCK = flags.DEFINE_integer("block", 5, "Steps per framework before switching to the other.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after compilation.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads (the issue's setting).")
_ALSO_ONE = flags.DEFINE_bool(
    "also_one_thread", True,
    "Also time torch with 1 thread: on a loaded 2-core machine 2 OpenMP threads can be slower.")
_MEMORY = flags.DEFINE_bool("memory", True, "Also measure peak RSS in one subprocess each.")
_THROUGHPUT = flags.DEFINE_bool("throughput", True, "Measure throughput (else memory only).")
_WORKER = flags.DEFINE_string("worker", None, "Internal: 'jax' or 'torch' memory worker.")
_WORKER_CONFIG = flags.DEFINE_string("worker_config", "small", "Internal: config of the worker.")


def make_batch(cfg: dict, seed: int = 0):
  """Random unpadded token batch (numpy int32): inputs (B, S), targets (B, T), ids in [5, V)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  b = cfg["batch"]
  inputs = rng.integers(5, cfg["vocab"], size=(b, cfg["src"]), dtype=np.int32)
  targets = rng.integers(5, cfg["vocab"], size=(b, cfg["tgt"]), dtype=np.int32)
  return inputs, targets


class JaxRunner:
  """Our step: `steps.train_step` + `optimizers.make_optimizer` (paper Adam), jitted once."""

  def __init__(self, cfg: dict):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top

    from transformer import model as model_lib  # pylint: disable=g-import-not-at-top
    from transformer.training import optimizers  # pylint: disable=g-import-not-at-top
    from transformer.training import state as state_lib  # pylint: disable=g-import-not-at-top
    from transformer.training import steps  # pylint: disable=g-import-not-at-top

    self.jax = jax
    model_cfg = model_lib.TransformerConfig(
        vocab_size=cfg["vocab"], d_model=cfg["d_model"], num_heads=cfg["heads"],
        d_ff=cfg["d_ff"], num_encoder_layers=cfg["layers"], num_decoder_layers=cfg["layers"],
        dropout_rate=0.1, max_len=max(cfg["src"], cfg["tgt"]))
    model = model_lib.EncoderDecoder(model_cfg, rngs=nnx.Rngs(params=0))
    graphdef, params, model_state = state_lib.split_model(model)
    tx, _ = optimizers.make_optimizer(optimizers.OptimizerConfig(), cfg["d_model"], 1000)
    self.state = state_lib.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32), params=params, model_state=model_state,
        opt_state=tx.init(params), rng=jax.random.PRNGKey(1))
    self.traces = 0
    step_fn = functools.partial(steps.train_step, graphdef=graphdef, tx=tx, task="translation",
                                bos_id=model_cfg.bos_id, label_smoothing=0.1)

    def counted(state, batch):
      self.traces += 1  # Runs at trace time only.
      return step_fn(state, batch)

    self.step_fn = jax.jit(counted, donate_argnums=0)
    inputs, targets = make_batch(cfg)
    ones = np.ones_like
    positions = lambda x: np.broadcast_to(np.arange(x.shape[1], dtype=np.int32), x.shape)
    batch = dict(inputs=inputs, targets=targets, inputs_position=positions(inputs),
                 targets_position=positions(targets), inputs_segmentation=ones(inputs),
                 targets_segmentation=ones(targets))
    # Batches live on the device before the loop (prefetched), as the training loop does.
    self.batch = jax.device_put(batch)
    self.metrics = None

  def compile(self) -> float:
    """Traces and compiles the step; returns seconds."""
    start = time.perf_counter()
    self.step_fn = self.step_fn.lower(self.state, self.batch).compile()
    return time.perf_counter() - start

  def step(self) -> None:
    self.state, self.metrics = self.step_fn(self.state, self.batch)

  def sync(self) -> float:
    return float(self.metrics["loss_sum"] / self.metrics["weight_sum"])


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
    inputs, targets = make_batch(cfg)
    self.inputs = torch.from_numpy(inputs).long()
    self.targets = torch.from_numpy(targets).long()
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


def timed_steps(runner, n: int) -> list[float]:
  """Runs n steps, syncing after each (the sync is inside the timed region, once per step)."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    runner.step()
    runner.sync()
    times.append(time.perf_counter() - start)
  return times


def peak_rss_mib() -> float:
  """Peak resident memory of this process image, MiB.

  VmHWM, not `ru_maxrss`: Linux carries the parent's peak into `ru_maxrss` across fork + exec,
  so a worker started by a big parent would report the parent's size.
  """
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(framework: str, name: str) -> None:
  """Memory worker: build, compile, warm up and run a few steps; print JSON with peak RSS."""
  cfg = CONFIGS[name]
  runner = JaxRunner(cfg) if framework == "jax" else TorchRunner(cfg, _THREADS.value)
  if framework == "jax":
    runner.compile()
  timed_steps(runner, 5)
  print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def measure_memory(framework: str, name: str) -> float:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.getcwd(), os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run(
      [sys.executable, __file__, f"--worker={framework}", f"--worker_config={name}",
       f"--threads={_THREADS.value}"],
      check=True, capture_output=True, text=True, env=env).stdout
  return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def run_config(name: str) -> dict:
  """Interleaved throughput of both frameworks on one configuration."""
  cfg = CONFIGS[name]
  tokens = cfg["batch"] * (cfg["src"] + cfg["tgt"])
  ours = JaxRunner(cfg)
  compile_s = ours.compile()
  peer = TorchRunner(cfg, _THREADS.value)
  runners = [ours, peer] + ([TorchRunner(cfg, 1)] if _ALSO_ONE.value else [])
  for runner in runners:
    timed_steps(runner, _WARMUP.value)
  times = [[] for _ in runners]
  while len(times[0]) < _STEPS.value:
    n = min(_BLOCK.value, _STEPS.value - len(times[0]))
    for runner, runner_times in zip(runners, times):
      runner_times += timed_steps(runner, n)
  if ours.traces != 1:
    raise RuntimeError(f"our step was traced {ours.traces} times, expected exactly 1")
  medians = [statistics.median(t) for t in times]
  result = dict(
      name=name, tokens=tokens, compile_s=compile_s, traces=ours.traces,
      ours_s=medians[0], peer_s=medians[1], peer1_s=medians[2] if _ALSO_ONE.value else None)
  if _MEMORY.value:
    result["ours_mib"] = measure_memory("jax", name)
    result["peer_mib"] = measure_memory("torch", name)
  return result


def main(argv):
  del argv
  if _WORKER.value:
    run_worker(_WORKER.value, _WORKER_CONFIG.value)
    return
  if _STEPS.value < 15:
    raise ValueError(f"--steps must be >= 15, got {_STEPS.value}")
  for name in _CONFIGS.value:
    if name not in CONFIGS:
      raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  print(f"jax {jax.__version__} devices={jax.devices()} XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}; torch {torch.__version__} eager, "
        f"threads={_THREADS.value}; cpus={os.cpu_count()} load average={os.getloadavg()}")
  print(f"steps={_STEPS.value} per framework (median), alternating blocks of {_BLOCK.value}, "
        f"warmup={_WARMUP.value}; float32; dropout 0.1, label smoothing 0.1, Adam")
  if not _THROUGHPUT.value:
    print(f"{'config':<6} {'ours MiB':>8} {f'torch{_THREADS.value} MiB':>10}  (peak RSS, VmHWM)")
    for name in _CONFIGS.value:
      print(f"{name:<6} {measure_memory('jax', name):>8.0f} "
            f"{measure_memory('torch', name):>10.0f}", flush=True)
    return
  results = [run_config(name) for name in _CONFIGS.value]
  t = _THREADS.value
  print(f"{'config':<6} {'ours tok/s':>11} {f'torch{t} tok/s':>12} {'torch1 tok/s':>12} "
        f"{'ours ms':>8} {f'torch{t} ms':>9} {'torch1 ms':>9} {'compile s':>9} {'traces':>6} "
        f"{'ours MiB':>8} {'torch MiB':>9}")
  for r in results:
    peer1 = (f"{r['tokens'] / r['peer1_s']:>12,.0f}", f"{1e3 * r['peer1_s']:>9.1f}") if (
        r["peer1_s"]) else (f"{'-':>12}", f"{'-':>9}")
    mem = (f"{r['ours_mib']:>8.0f} {r['peer_mib']:>9.0f}" if "ours_mib" in r
           else f"{'-':>8} {'-':>9}")
    print(f"{r['name']:<6} {r['tokens'] / r['ours_s']:>11,.0f} "
          f"{r['tokens'] / r['peer_s']:>12,.0f} {peer1[0]} {1e3 * r['ours_s']:>8.1f} "
          f"{1e3 * r['peer_s']:>9.1f} {peer1[1]} {r['compile_s']:>9.1f} {r['traces']:>6} {mem}")
  print("ratio ours/torch tokens/s: " + ", ".join(
      f"{r['name']} {r['peer_s'] / r['ours_s']:.2f}x vs {t} threads"
      + (f", {r['peer1_s'] / r['ours_s']:.2f}x vs 1 thread" if r["peer1_s"] else "")
      for r in results))


if __name__ == "__main__":
  app.run(main)
