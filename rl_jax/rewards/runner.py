"""Runs reward functions so that one that raises or hangs cannot stop training or evaluation.

Each call gets a wall-clock timeout (SIGALRM interval timer in the main thread; elsewhere only
exceptions are contained); a failure is logged (logger "rl_jax.rewards", WARNING) with the offending
input's index, scored `default`, and counted: `last_failures` (the latest call) and `failures` (all
calls) let a loop put the count in its metrics. The built-in math grader is bounded by itself
(`rl_jax.rewards.expr`); the timeout is the guard for user-supplied reward functions.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable, Sequence

logger = logging.getLogger("rl_jax.rewards")


class _Timeout(Exception):
  pass


class RewardRunner:
  def __init__(self, fn: Callable[..., float], *, timeout: float = 5.0, default: float = 0.0):
    self.fn, self.timeout, self.default = fn, timeout, default
    self.failures: list[tuple[int, str]] = []
    self.last_failures = 0

  def _call(self, *args) -> float:
    if threading.current_thread() is not threading.main_thread() or self.timeout <= 0:
      return float(self.fn(*args))

    def alarm(signum, frame):
      raise _Timeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, self.timeout)
    try:
      return float(self.fn(*args))
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, previous)

  def __call__(self, *columns: Sequence) -> list[float]:
    """Scores row i with fn(columns[0][i], columns[1][i], ...)."""
    out, before = [], len(self.failures)
    for i, args in enumerate(zip(*columns)):
      try:
        out.append(self._call(*args))
      except _Timeout:
        self.failures.append((i, f"timeout after {self.timeout}s"))
        logger.warning("reward %d timed out after %.1fs; scored %s", i, self.timeout, self.default)
        out.append(self.default)
      except Exception as e:  # noqa: BLE001 - any reward bug is contained
        self.failures.append((i, f"{type(e).__name__}: {e}"))
        logger.warning("reward %d raised %s: %s; scored %s", i, type(e).__name__, e, self.default)
        out.append(self.default)
    self.last_failures = len(self.failures) - before
    return out
