"""Stopping a run between steps: SIGTERM (a preemption notice) or Ctrl-C saves a checkpoint."""

import os
import signal
import sys
import threading

from absl import logging
from jax.experimental import multihost_utils

from transformer.training import errors


class StopSignal:
  """Records SIGTERM / SIGINT so the loop can checkpoint and stop between steps.

  With several processes every process must stop after the same step, since saving a
  checkpoint is collective. SIGTERM is then left to jax's preemption service, which catches it
  (on any process), tells the others, and makes `reached_preemption_sync_point` true for one
  common step on all; Ctrl-C is turned into a SIGTERM of this process to take the same path.
  """

  def __init__(self, multiprocess: bool = False, exit_message: str | None = None):
    """Args:
      multiprocess: whether other processes must stop at the same step.
      exit_message: with it, a second Ctrl-C prints it and exits the program at once (status
        errors.EXIT_INTERRUPTED); without it (a notebook), a second Ctrl-C raises KeyboardInterrupt.
    """
    self.received = None
    self._multiprocess = multiprocess
    self._exit_message = exit_message
    self._forwarded = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      if self._multiprocess:
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward)
      else:
        for sig in (signal.SIGTERM, signal.SIGINT):
          self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _second_interrupt(self):
    """A second Ctrl-C stops at once (a KeyboardInterrupt raised here may land in code that
    ignores it, such as a garbage-collector callback, hence the exit)."""
    if self._exit_message is None:
      raise KeyboardInterrupt
    # On a line of its own: the progress bar's line has no newline yet.
    print("\n" + self._exit_message, file=sys.stderr, flush=True)
    os._exit(errors.EXIT_INTERRUPTED)  # No waiting on background threads: the user asked twice.

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      self._second_interrupt()
    self.received = signal.Signals(signum).name
    logging.warning("Received %s: saving a checkpoint and stopping after this step.",
                    self.received)

  def _forward(self, signum, frame):
    if self._forwarded:
      self._second_interrupt()
    self._forwarded = True
    logging.warning("Received SIGINT: all processes save a checkpoint and stop at a common step.")
    signal.raise_signal(signal.SIGTERM)  # To jax's preemption service (a C-level handler).

  def poll(self, step: int) -> str | None:
    """The signal that stops training after `step` (call once per step, on every process)."""
    if self._multiprocess and self.received is None:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = "SIGINT" if self._forwarded else "SIGTERM"
        logging.warning("Preemption notice (%s) on some process: saving a checkpoint at step %d "
                        "on every process and stopping.", self.received, step)
    return self.received

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
