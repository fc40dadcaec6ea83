"""The packed-panel dense layer y = x · Wᵀ on CPU through XLA FFI, with its pure-jnp reference.

`pack_panels` rearranges an output-major weight W [N, K] once into column panels [⌈N/48⌉, K, 48] (N padded with
zero rows): each panel is the contiguous stream the kernel (packed_dense.cc) reads for 48 output columns. XLA's
CPU matmul re-packs its weight operand on every call; at a few dozen rows that repacking, not the arithmetic,
sets its speed, so a weight reused for hundreds of decode steps is packed once here instead.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.kernels.cpu.build import build
from rl_jax.models.llama import rms_scale

PANEL = 48                      # columns per panel (kPanel in packed_dense.cc)
TARGET = "rl_jax_packed_dense"
RMS_TARGET = "rl_jax_packed_dense_rms"
ATTENTION_TARGET = "rl_jax_decode_attention"
LIBRARIES = {"packed_dense": ((TARGET, "RlJaxPackedDense"), (RMS_TARGET, "RlJaxPackedDenseRms")),  # stem → targets
             "decode_attention": ((ATTENTION_TARGET, "RlJaxDecodeAttention"),)}
ENV = "RL_JAX_CPU_KERNELS"      # "0" disables the kernels (the XLA path runs instead)
logger = logging.getLogger("rl_jax.kernels.cpu")
_state: dict = {}
_lock = threading.Lock()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedWeight:
  """A weight W [N, K] as panels [⌈N/48⌉, K, 48]: panels[p, k, j] = W[p·48 + j, k], zero past N. With `rms_eps`,
  the panels hold W · diag(g) for an RMSNorm gain g and `packed_dense` normalises its input's rows first."""
  panels: jax.Array
  n: int = dataclasses.field(metadata=dict(static=True))
  rms_eps: float | None = dataclasses.field(default=None, metadata=dict(static=True))


def pack_panels(w: jax.Array, norm: jax.Array | None = None, eps: float | None = None) -> PackedWeight:
  """W [N, K] (output-major) → PackedWeight; N is padded to a whole panel with zero rows. With an RMSNorm gain
  `norm` [K] and its `eps`, the packed weight computes rms_norm(x, norm, eps) · Wᵀ from the raw x (the gain is
  folded into the columns of W once here)."""
  n, k = w.shape
  if (norm is None) != (eps is None) or (norm is not None and norm.shape != (k,)):
    raise ValueError(f"pack_panels wants both an RMSNorm gain [{k}] and its eps, or neither; got "
                     f"{None if norm is None else list(norm.shape)} and {eps}.")
  if norm is not None:
    w = w * norm[None, :].astype(w.dtype)
  w = jnp.pad(w, ((0, (-n) % PANEL), (0, 0)))
  return PackedWeight(jnp.swapaxes(w.reshape(-1, PANEL, k), 1, 2), n, None if eps is None else float(eps))


def packed_dense_reference(x: jax.Array, w: PackedWeight) -> jax.Array:
  """x [M, K] · Wᵀ from the panels in jnp (x's rows RMS-normalised first when w.rms_eps is set): [M, P·48] cut to
  N columns (any platform)."""
  if w.rms_eps is not None:
    x = rms_scale(x, w.rms_eps)
  y = jnp.einsum("mk,pkj->mpj", x, w.panels, preferred_element_type=jnp.float32)
  return y.reshape(x.shape[0], -1)[:, :w.n]


def disabled_by_env() -> bool:
  return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


def load() -> bool:
  """Builds (first use) and registers the kernel library; False, with one log line saying why, when it cannot
  be (no compiler, a failed build, or RL_JAX_CPU_KERNELS=0). Decided once per process."""
  with _lock:
    if "ok" not in _state:
      _state["ok"] = _try_load()
    return _state["ok"]


def _try_load() -> bool:
  if disabled_by_env():
    logger.warning("rl_jax CPU kernels disabled by %s=0: the decode step uses XLA's matmuls.", ENV)
    return False
  try:
    for stem, targets in LIBRARIES.items():
      lib = ctypes.cdll.LoadLibrary(str(build(stem)))
      for target, symbol in targets:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (RuntimeError, OSError, AttributeError) as e:
    logger.warning("rl_jax CPU kernels unavailable (%s): the decode step uses XLA's matmuls.", e)
    return False
  return True


def max_threads() -> int:
  """Threads the kernel may split over: 1 when XLA's own matmuls are made single-threaded
  (XLA_FLAGS=--xla_cpu_multi_thread_eigen=false), else 0 (all of XLA's intra-op threads)."""
  return 1 if "--xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", "") else 0


def packed_dense(x: jax.Array, w: PackedWeight) -> jax.Array:
  """y [M, N] = x [M, K] · Wᵀ (float32; x's rows RMS-normalised first when w.rms_eps is set, in the kernel): the
  FFI kernel when this lowers for CPU, the jnp reference on other platforms. Call `load()` first (it registers
  the kernel)."""
  if x.ndim != 2 or x.shape[1] != w.panels.shape[1] or x.dtype != jnp.float32 or w.panels.dtype != jnp.float32:
    raise ValueError(f"packed_dense wants float32 x [M, {w.panels.shape[1]}] and float32 panels, got x "
                     f"{x.dtype}{list(x.shape)}, panels {w.panels.dtype}{list(w.panels.shape)}.")
  out = jax.ShapeDtypeStruct((x.shape[0], w.n), jnp.float32)
  attrs = dict(max_threads=np.int64(max_threads()))
  if w.rms_eps is not None:
    attrs["eps"] = np.float32(w.rms_eps)
  call = jax.ffi.ffi_call(TARGET if w.rms_eps is None else RMS_TARGET, out, vmap_method="sequential")
  return jax.lax.platform_dependent(x, w.panels, cpu=lambda x, p: call(x, p, **attrs),
                                    default=lambda x, p: packed_dense_reference(x, PackedWeight(p, w.n, w.rms_eps)))


def decode_attention_reference(q: jax.Array, keys: jax.Array, values: jax.Array, bias: jax.Array) -> jax.Array:
  """softmax(q·keys + bias) · values in jnp: q [B, K, G, hd] (pre-scaled), keys [B, K, hd, S], values
  [B, K, S, hd], bias [B, S] → [B, K, G, hd] (float32)."""
  scores = jnp.einsum("bkgd,bkds->bkgs", q, keys) + bias[:, None, None, :]
  return jnp.einsum("bkgs,bksd->bkgd", jax.nn.softmax(scores, axis=-1), values)


def decode_attention(q: jax.Array, keys: jax.Array, values: jax.Array, bias: jax.Array) -> jax.Array:
  """One-token attention over a KV cache (decode_attention.cc) when this lowers for CPU, the jnp reference on
  other platforms; float32 operands, shapes as in `decode_attention_reference`. Call `load()` first."""
  b, k, g, hd = q.shape
  s = keys.shape[-1]
  want = {"keys": (b, k, hd, s), "values": (b, k, s, hd), "bias": (b, s)}
  got = {"keys": keys.shape, "values": values.shape, "bias": bias.shape}
  if got != want or s == 0 or any(a.dtype != jnp.float32 for a in (q, keys, values, bias)):
    raise ValueError(f"decode_attention wants float32 keys/values/bias of shapes {want} (S > 0) for q "
                     f"{list(q.shape)}, got {got} and dtypes {[a.dtype for a in (q, keys, values, bias)]}.")
  call = jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct(q.shape, jnp.float32), vmap_method="sequential")
  return jax.lax.platform_dependent(q, keys, values, bias, default=decode_attention_reference,
                                    cpu=lambda *a: call(*a, max_threads=np.int64(max_threads())))
