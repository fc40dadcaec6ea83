"""What a result was measured on: the CPU model and the jax backend, for the lines tables and runs print.

Float results of long training runs depend on the CPU (XLA's CPU code differs between instruction sets),
so a table's machine line names the CPU model, not only the core count.
"""

from __future__ import annotations

import os
import platform

import jax


def cpu_model() -> str:
  """The CPU's model name ('model name' in /proc/cpuinfo on Linux), else platform.processor() or the
  architecture."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith(("model name", "hardware", "cpu model")):
          name = line.split(":", 1)[1].strip()
          if name:
            return name
  except OSError:
    pass
  return platform.processor() or platform.machine()


def describe() -> str:
  """'<cpu model> (<arch>), <n> CPU cores, jax <version> on <backend> (<k> devices)'."""
  n = jax.device_count()
  return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPU cores, jax {jax.__version__} on "
          f"{jax.devices()[0].platform} ({n} device{'s' if n > 1 else ''})")
