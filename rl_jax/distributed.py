"""Multi-host start-up: one call at the top of an experiment, a no-op on a single machine.

On a Cloud TPU pod slice, `jax.distributed.initialize()` with no arguments reads the coordinator
address, process count and process id from the TPU metadata. Elsewhere (GPU clusters, local
multi-process tests) pass them explicitly. Launch scripts set RL_JAX_MULTIHOST=1.
"""

from __future__ import annotations

import os
from typing import Optional

import jax


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Initialises JAX's multi-host runtime when asked to (args given or RL_JAX_MULTIHOST=1)."""
  if coordinator_address is None and os.environ.get("RL_JAX_MULTIHOST") != "1":
    return False
  if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return True
