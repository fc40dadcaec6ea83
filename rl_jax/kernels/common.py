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


def lowering_for_tpu() -> bool:
  """Whether kernels are being built for a TPU: the default backend is one, or the trace runs under a mesh of
  TPU devices (`jax.set_mesh`, e.g. rl_jax.aot's deviceless compilation on a CPU host)."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  kind = device.device_kind if device is not None else jax.devices()[0].device_kind
  return kind.startswith("TPU")


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
