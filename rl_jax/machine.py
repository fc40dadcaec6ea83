"""What a result was measured on: the CPU model and the jax backend, for the lines tables and runs print.

Float results of long training runs depend on the CPU (XLA's CPU code differs between instruction sets),
so a table's machine line names the CPU model, not only the core count. `python -m rl_jax.machine` prints the
machine line and the malloc settings its command-line entry points run with (`reexec_with_malloc_env`).
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


# glibc malloc for XLA:CPU's per-call buffers: XLA allocates each call's temporary buffer (1.7 GiB for a SmolLM2
# train step) with malloc from its executor thread, whose non-main arena maps a fresh region for it on every call
# and unmaps it on free, so every call faults in (and the kernel zeroes) ~440k fresh pages. One arena (the main
# one, grown by brk), no mmap for large blocks and no trimming keep those pages mapped between calls. glibc
# reads these variables when the process starts: `reexec_with_malloc_env` restarts a command-line entry point
# with them set; `launch/local.sh` exports them.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
MALLOC_SWITCH = "RL_JAX_MALLOC_ENV"   # "0" leaves the process's malloc settings alone


def malloc_env_missing(environ, libc: str | None = None) -> dict:
  """The MALLOC_ENV entries that `environ` lacks, {} when none are missing, when environ[MALLOC_SWITCH] is "0"
  or when the C library (`platform.libc_ver()`'s name by default) is not glibc. A variable already set, to any
  value, is left as it is."""
  libc = platform.libc_ver()[0] if libc is None else libc
  if libc != "glibc" or environ.get(MALLOC_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
    return {}
  return {k: v for k, v in MALLOC_ENV.items() if k not in environ}


def reexec_with_malloc_env(module: str) -> None:
  """Replaces this process with `python -m module <its arguments>` with MALLOC_ENV added when some of it is
  missing (see `malloc_env_missing`); returns when nothing is missing. Call it first in a `__main__` block."""
  missing = malloc_env_missing(os.environ)
  if missing:
    import sys
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], {**os.environ, **missing})


if __name__ == "__main__":
  reexec_with_malloc_env("rl_jax.machine")
  print(describe())
  print(" ".join(f"{k}={os.environ.get(k)}" for k in MALLOC_ENV))
