"""Multi-host start-up: one call at the top of an experiment, a no-op on a single machine.

On a Cloud TPU pod slice, `jax.distributed.initialize()` with no arguments reads the coordinator
address, process count and process id from the TPU metadata. Elsewhere (GPU clusters, local
multi-process tests) pass them explicitly. Launch scripts set RL_JAX_MULTIHOST=1.

Output: process 0 prints and logs. After joining, every other process sends its stdout to
$RL_JAX_LOG_DIR/process_<i>.log when that is set, and discards it otherwise; stderr (warnings,
tracebacks) stays on every process.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import jax


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Initialises JAX's multi-host runtime when asked to (args given or RL_JAX_MULTIHOST=1)."""
  if coordinator_address is None and os.environ.get("RL_JAX_MULTIHOST") != "1":
    return False
  # CPU collectives across processes (only read by the CPU backend). Asking jax which backend is in use
  # here would start it, and jax.distributed.initialize must come before any backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  quiet_non_main_stdout()
  return True


def is_main_process() -> bool:
  """True on process 0 (and on a single machine): the one process that prints and writes logs."""
  return jax.process_index() == 0


def quiet_non_main_stdout(log_dir: Optional[str] = None) -> Optional[str]:
  """On a process other than 0, sends stdout to <log_dir>/process_<i>.log (log_dir: $RL_JAX_LOG_DIR) or
  discards it; returns the file it now writes to, or None on process 0."""
  if is_main_process():
    return None
  log_dir = log_dir or os.environ.get("RL_JAX_LOG_DIR")
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
    target = os.path.join(log_dir, f"process_{jax.process_index()}.log")
  else:
    target = os.devnull
  sys.stdout.flush()
  sys.stdout = open(target, "a", buffering=1)
  return target
