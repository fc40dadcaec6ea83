"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import time

import jax
import numpy as np


def median_time(fn, *args, repeats: int = 5) -> float:
  """Median wall time (seconds) of fn(*args) over `repeats` runs, after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
