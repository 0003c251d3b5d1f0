"""Framework-free pieces of the benchmarks: shapes, random batches, timing, memory, and running
each implementation in a process of its own at low load.

Imports neither JAX nor torch, so each worker process loads only its own framework.
"""

import json
import os
import resource
import statistics
import subprocess
import time

import numpy as np

# name: (vocab V, d_model D, heads N, d_ff F, layers per stack, batch B, source S, target T).
# "small" and "base" are the CPU configurations; "gpu_base" and "gpu_big" are the
# paper's base and big models with about 25k source + 25k target tokens per batch (the paper's
# batch size, which fills an H100); "smoke" exercises every code path in seconds on a CPU.
CONFIGS = {
    "small": dict(vocab=8000, d_model=256, heads=4, d_ff=1024, layers=3, batch=32, src=32,
                  tgt=32),
    "base": dict(vocab=32000, d_model=512, heads=8, d_ff=2048, layers=6, batch=16, src=64,
                 tgt=64),
    "gpu_base": dict(vocab=32000, d_model=512, heads=8, d_ff=2048, layers=6, batch=384, src=64,
                     tgt=64),
    "gpu_big": dict(vocab=32000, d_model=1024, heads=16, d_ff=4096, layers=6, batch=384,
                    src=64, tgt=64),
    "smoke": dict(vocab=64, d_model=32, heads=4, d_ff=64, layers=1, batch=4, src=8, tgt=8),
}


def make_batch(shape: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random unpadded translation batch (numpy int32, the contract's keys), ids in [5, V)."""
  rng = np.random.default_rng(seed)
  b = shape["batch"]
  inputs = rng.integers(5, shape["vocab"], size=(b, shape["src"]), dtype=np.int32)
  targets = rng.integers(5, shape["vocab"], size=(b, shape["tgt"]), dtype=np.int32)
  positions = lambda x: np.broadcast_to(np.arange(x.shape[1], dtype=np.int32), x.shape).copy()
  return dict(inputs=inputs, targets=targets, inputs_position=positions(inputs),
              targets_position=positions(targets), inputs_segmentation=np.ones_like(inputs),
              targets_segmentation=np.ones_like(targets))


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


def wait_for_quiet(max_load: float, wait_s: float) -> float:
  """Waits up to `wait_s` seconds for the 1-minute load average to fall to `max_load`.

  Returns:
    The load average when the wait ended (above `max_load` if it never fell that far).
  """
  deadline = time.monotonic() + wait_s
  while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
    time.sleep(5)
  return os.getloadavg()[0]


def run_worker(argv: list[str], *, label: str, max_load: float, wait_s: float,
               env: dict | None = None, cwd: str | None = None) -> dict:
  """Runs one benchmark worker process alone and returns the JSON of its last RESULT line.

  Waits for a quiet machine first (`wait_for_quiet`), prints the load average before and after,
  and adds them to the result with `loaded`: True when the load was above `max_load` at the
  start, i.e. the figure was measured beside other work and must not be reported as a speed.

  Args:
    argv: the worker's command line; it prints `RESULT {json}` as its last such line.
    label: what the printed load line names.
    max_load: the highest 1-minute load average at which a measurement counts.
    wait_s: seconds to wait for the load to fall.
    env: the worker's environment (default: this process's).
    cwd: its working directory.

  Raises:
    RuntimeError: the worker failed or printed no RESULT line (with the end of its stderr).
  """
  load_before = wait_for_quiet(max_load, wait_s)
  proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
  load_after = os.getloadavg()[0]
  if proc.returncode:
    raise RuntimeError(f"{label} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  if not lines:
    raise RuntimeError(f"{label} worker printed no RESULT line:\n{proc.stdout[-2000:]}\n"
                       f"{proc.stderr[-2000:]}")
  result = json.loads(lines[-1][len("RESULT "):])
  result.update(load_before=load_before, load_after=load_after, loaded=load_before > max_load)
  print(f"  {label:<24} load {load_before:4.2f} -> {load_after:4.2f}"
        f"{'  LOADED' if result['loaded'] else ''}", flush=True)
  return result


def ratio_line(rows: list[dict], names: list[str]) -> str:
  """The speed of "ours" over each other implementation, and over the best peer.

  Args:
    rows: measurements with "config", "impl", "step_s" and "loaded"; rows measured under load
      are left out; several rounds of one implementation count by their median.
    names: the configurations to report, in order.

  Returns:
    One line: "ratio ...: small: ours 1.20x torch2, 1.30x flax_wmt; 1.20x the best peer | ...",
    where a peer is any implementation other than "ours" whose label does not start with
    "ours" (an "ours@ab" row of an A/B comparison is not a peer).
  """
  parts = []
  for name in names:
    by_impl = {}
    for r in rows:
      if r["config"] == name and not r["loaded"]:
        by_impl.setdefault(r["impl"], []).append(r["step_s"])
    if "ours" not in by_impl:
      parts.append(f"{name}: no unloaded measurement of ours")
      continue
    ours = statistics.median(by_impl["ours"])
    others = {k: statistics.median(v) for k, v in by_impl.items() if k != "ours"}
    text = ", ".join(f"{others[k] / ours:.2f}x {k}" for k in others)
    peers = {k: v for k, v in others.items() if not k.startswith("ours")}
    best = f"; {min(peers.values()) / ours:.2f}x the best peer" if peers else ""
    parts.append(f"{name}: ours {text}{best}")
  return "ratio (tokens/s of ours / of the other): " + " | ".join(parts)
