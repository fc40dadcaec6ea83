"""Helpers shared by the kernels: backend choice and padding to whole blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("auto", "pallas", "interpret", "reference")


def resolve_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"Unknown impl {impl!r}; expected one of {IMPLS}.")
  if impl == "auto":
    return "pallas" if jax.default_backend() in ("gpu", "tpu") else "reference"
  return impl


def pad_to(x: jax.Array, multiples: tuple[int, ...], value=0) -> jax.Array:
  pads = [(0, (-n) % m) for n, m in zip(x.shape, multiples)]
  return jnp.pad(x, pads, constant_values=value) if any(p for _, p in pads) else x


def gpu_compiler_params():
  """Triton compiler parameters when the default backend is a GPU, else None (the platform's default).

  This JAX lowers `pl.pallas_call` on GPU to Mosaic GPU unless given Triton parameters; Mosaic GPU caps a
  copy at 256 elements per dimension and stages whole blocks in shared memory, which these kernels'
  full-row blocks exceed. They are written for the Triton lowering (power-of-two tiles per load).
  """
  if jax.default_backend() == "gpu":
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams()
  return None
