"""Framework-free pieces of the training benchmarks: shapes, random batches, timing, memory.

Imports neither JAX nor torch, so each memory worker of `bench/train_step.py` loads only its own
framework.
"""

import ctypes
import gc
import resource
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


def release_freed_heap() -> bool:
  """Returns memory that the process has freed but glibc's malloc still holds to the system.

  XLA's compiler frees hundreds of MiB after compiling a train step, spread over the malloc
  arenas of its compile threads; glibc keeps them mapped, so they count in the resident size
  for the rest of the run. `malloc_trim(0)` gives back every free page of every arena. It frees
  nothing in use. Returns False where glibc is absent (then it does nothing).
  """
  gc.collect()
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  libc.malloc_trim(0)
  return True
