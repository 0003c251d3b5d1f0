"""A `jax.profiler` trace of a window of train steps (`training.profile_steps`), written where
TensorBoard's Profile tab (the xprof plugin) finds it: `<log_dir>/plugins/profile/<time>/`.
"""

import os
import shutil
import tempfile

import jax
from absl import logging

from transformer import storage


def trace_dir(tensorboard_dir: str, process_index: int) -> str:
  """Where process `process_index` writes its trace: the TensorBoard directory for process 0,
  `process_<p>/` in it for the others. Each process traces its own host and devices; in
  directories of their own, two processes on one host cannot overwrite each other's
  `<host>.xplane.pb`."""
  if process_index == 0:
    return tensorboard_dir
  return os.path.join(tensorboard_dir, f"process_{process_index}")


def _session_names(sessions: str) -> set[str]:
  """The trace sessions (subdirectories) in a local plugins/profile directory; TensorBoard
  keeps a cache file there too."""
  if not os.path.isdir(sessions):
    return set()
  return {n for n in os.listdir(sessions) if os.path.isdir(os.path.join(sessions, n))}


class StepProfiler:
  """Starts a trace before the first step of a window and stops it after the last one.

  Steps are numbered as in metrics.jsonl: step n takes the state from n - 1 to n steps done.
  A run that starts inside the window (a resume) traces the rest of it; a run stopped inside it
  (SIGTERM, an error) ends the trace in `stop`, so the steps up to there are kept.
  """

  def __init__(self, window: tuple[int, int] | None, log_dir: str):
    """Args:
      window: (first, last) step to trace, both included; None traces nothing.
      log_dir: the TensorBoard directory (local or gs://; a remote one is traced to a local
        temporary directory and copied there when the trace stops).
    """
    self._window = window
    self._log_dir = log_dir
    self._local_dir = None  # Where the running trace goes; None while none runs.
    self.num_traced = 0  # Steps traced so far.
    self.trace_paths: list[str] = []  # The session directories of finished traces.

  @property
  def active(self) -> bool:
    return self._local_dir is not None

  def before_step(self, step: int) -> None:
    """Starts the trace if `step` (about to run) is in the window and this run has not traced
    yet (so a run resumed inside the window traces the rest of it)."""
    if self._window is None or self.active or self.num_traced:
      return
    first, last = self._window
    if first <= step <= last:
      self._local_dir = (tempfile.mkdtemp(prefix="profile_")
                         if storage.is_remote(self._log_dir) else self._log_dir)
      jax.profiler.start_trace(self._local_dir)
      logging.info("Profiling steps %d..%d into %s.", step, last, self._log_dir)

  def step_annotation(self, step: int):
    """Context manager that marks `step` in the trace (the Profile tab's step-time view)."""
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after_step(self, step: int, outputs) -> None:
    """Counts `step`; after the window's last step, waits for `outputs` and stops the trace.

    Args:
      step: the step just run.
      outputs: what it returned (the trace must hold its device work, not just its dispatch).
    """
    if not self.active:
      return
    self.num_traced += 1
    if step >= self._window[1]:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    """Stops a running trace and writes it (nothing when none runs)."""
    if not self.active:
      return
    local_dir, self._local_dir = self._local_dir, None
    sessions = os.path.join(local_dir, "plugins", "profile")
    before = _session_names(sessions)
    jax.profiler.stop_trace()  # Writes plugins/profile/<time>/<host>.xplane.pb.
    paths = []
    for name in sorted(_session_names(sessions) - before):
      paths.append(os.path.join(self._log_dir, "plugins", "profile", name))
      if local_dir != self._log_dir:
        storage.copy_tree(os.path.join(sessions, name), paths[-1])
    if local_dir != self._log_dir:
      shutil.rmtree(local_dir, ignore_errors=True)
    self.trace_paths.extend(paths)
    logging.info("Wrote a profile of %d steps to %s (tensorboard --logdir %s, Profile tab).",
                 self.num_traced, ", ".join(paths) or self._log_dir, self._log_dir)
