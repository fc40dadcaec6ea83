"""Compiles the C++ kernels shipped beside this file into a shared library, once per source, flags, JAX version,
compiler and CPU, into a per-user cache (RL_JAX_KERNEL_CACHE, default ~/.cache/rl_jax/cpu_kernels).

The library is built with -march=native, so the cache key includes the CPU's model and feature flags: a cache
shared between hosts never loads a binary built for another CPU. Writes are atomic (a temporary file renamed
into place), so processes that build at the same time (pytest workers) each end with a complete file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

SOURCE_DIR = Path(__file__).resolve().parent
FLAGS = ("-O3", "-march=native", "-std=gnu++20", "-shared", "-fPIC", "-w")   # gnu++: FMA contraction stays on


def cache_dir() -> Path:
  """Where built libraries live: $RL_JAX_KERNEL_CACHE, else ~/.cache/rl_jax/cpu_kernels."""
  env = os.environ.get("RL_JAX_KERNEL_CACHE")
  return Path(env) if env else Path.home() / ".cache" / "rl_jax" / "cpu_kernels"


def compiler() -> str | None:
  """The C++ compiler: $CXX, else g++, else c++ (None when there is none)."""
  for name in (os.environ.get("CXX"), "g++", "c++"):
    if name and shutil.which(name):
      return name
  return None


def cpu_identity() -> str:
  """The machine architecture, CPU model and feature flags (the first processor of /proc/cpuinfo where present)."""
  parts = [platform.machine(), platform.processor()]
  try:
    with open("/proc/cpuinfo") as f:
      block = f.read().split("\n\n")[0]
    parts += [line for line in block.splitlines()
              if line.split(":")[0].strip() in ("vendor_id", "model name", "flags", "Features", "CPU part")]
  except OSError:
    pass
  return "\n".join(parts)


def compiler_version(cxx: str) -> str:
  return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout


def cache_key(source: str, flags: tuple[str, ...], cxx_version: str, cpu: str) -> str:
  """sha256 over the source text, compiler flags and version, JAX/jaxlib versions and the CPU identity."""
  import jaxlib
  h = hashlib.sha256()
  for part in (source, " ".join(flags), cxx_version, jax.__version__, jaxlib.__version__, cpu):
    h.update(part.encode())
    h.update(b"\0")
  return h.hexdigest()[:24]


def source_text(name: str) -> str:
  """The text the library of <name>.cc is built from: the source and every header of SOURCE_DIR (sorted by name),
  so an edit to a shared header changes the cache key of every library."""
  parts = [(SOURCE_DIR / f"{name}.cc").read_text()]
  parts += [f"// {h.name}\n{h.read_text()}" for h in sorted(SOURCE_DIR.glob("*.h"))]
  return "\n".join(parts)


def library_path(name: str, source: str, flags: tuple[str, ...], cxx_version: str, cpu: str) -> Path:
  """The cached library file for one build: <cache>/<name>-<key>.so."""
  return cache_dir() / f"{name}-{cache_key(source, flags, cxx_version, cpu)}.so"


def build(name: str) -> Path:
  """The shared library of SOURCE_DIR/<name>.cc and the headers beside it, compiled on first use (RuntimeError
  when it cannot be)."""
  cxx = compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set CXX or install g++)")
  src = SOURCE_DIR / f"{name}.cc"
  flags = FLAGS + (f"-I{jax.ffi.include_dir()}",)
  out = library_path(name, source_text(name), FLAGS, compiler_version(cxx), cpu_identity())
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    res = subprocess.run([cxx, *flags, str(src), "-o", tmp], capture_output=True, text=True, check=False)
    if res.returncode != 0:
      raise RuntimeError(f"{cxx} failed on {src.name}: {res.stderr.strip()[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out
