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
from rl_jax.models.llama import rms_scale, rotate_half

PANEL = 48                      # columns per panel (kPanel in packed_dense.cc)
TARGET = "rl_jax_packed_dense"
RMS_TARGET = "rl_jax_packed_dense_rms"
ATTENTION_TARGET = "rl_jax_decode_attention"
UPDATE_TARGET = "rl_jax_decode_attention_update"
PACK_INPUT_TARGET = "rl_jax_pack_input_major"
PACK_OUTPUT_TARGET = "rl_jax_pack_output_major"
LIBRARIES = {"packed_dense": ((TARGET, "RlJaxPackedDense"), (RMS_TARGET, "RlJaxPackedDenseRms")),  # stem → targets
             "decode_attention": ((ATTENTION_TARGET, "RlJaxDecodeAttention"),
                                  (UPDATE_TARGET, "RlJaxDecodeAttentionUpdate")),
             "pack_panels": ((PACK_INPUT_TARGET, "RlJaxPackInputMajor"), (PACK_OUTPUT_TARGET, "RlJaxPackOutputMajor"))}
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


def pack_panels_input_major(w: jax.Array, norm: jax.Array | None = None, eps: float | None = None) -> PackedWeight:
  """`pack_panels(w.T, norm, eps)` from an input-major weight w [K, N] (the parameters' own layout): panels[p, k, j] =
  w[k, p·48 + j]·g[k]. Each panel row is a contiguous run of 48 of w's columns, so no output-major copy of w is
  made first (SmolLM2-135M's weights pack in about 0.5 instead of 0.8 CPU seconds, once per sampler call)."""
  k, n = w.shape
  if (norm is None) != (eps is None) or (norm is not None and norm.shape != (k,)):
    raise ValueError(f"pack_panels_input_major wants both an RMSNorm gain [{k}] and its eps, or neither; got "
                     f"{None if norm is None else list(norm.shape)} and {eps}.")
  if norm is not None:
    w = w * norm[:, None].astype(w.dtype)
  w = jnp.pad(w, ((0, 0), (0, (-n) % PANEL)))
  return PackedWeight(jnp.swapaxes(w.reshape(k, -1, PANEL), 0, 1), n, None if eps is None else float(eps))


def _check_gain(name: str, norm, eps, want: tuple) -> None:
  """Raises ValueError unless an RMSNorm gain of shape `want` comes with its eps, or neither is given."""
  if (norm is None) != (eps is None) or (norm is not None and tuple(norm.shape) != want):
    raise ValueError(f"{name} wants both an RMSNorm gain {list(want)} and its eps, or neither; got "
                     f"{None if norm is None else list(norm.shape)} and {eps}.")


def _panels_out(n: int, k: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((-(-n // PANEL), k, PANEL), jnp.float32)


def pack_input_major_op(ws, norm: jax.Array | None = None, eps: float | None = None,
                        layer: int | None = None) -> PackedWeight:
  """`pack_panels_input_major(concatenate([w[layer] for w in ws], axis=1), norm[layer], eps)` in one pass over each
  weight (pack_panels.cc, the same panels bit for bit) when this lowers for CPU, that jnp reference on other
  platforms. ws: float32 input-major weights [K, N_i], or stacked [L, K, N_i] with `layer` picking one (read in
  place: no slice or concatenation is materialised); norm: [K], or [L, K] with a layer. Call `load()` first."""
  ws = tuple(ws)
  rank = 2 if layer is None else 3
  if (not ws or any(w.ndim != rank or w.dtype != jnp.float32 or w.shape[:-1] != ws[0].shape[:-1] for w in ws)
          or (layer is not None and not 0 <= layer < ws[0].shape[0])):
    raise ValueError(f"pack_input_major_op wants float32 weights all [{'L, ' * (rank - 2)}K, N_i] with the same "
                     f"leading axes{'' if layer is None else ' and a layer in [0, L)'}; got "
                     f"{[f'{w.dtype}{list(w.shape)}' for w in ws]}, layer {layer}.")
  _check_gain("pack_input_major_op", norm, eps, ws[0].shape[:-1])
  k, n = ws[0].shape[-2], sum(w.shape[-1] for w in ws)
  gain = jnp.zeros((0,), jnp.float32) if norm is None else norm.astype(jnp.float32)
  call = jax.ffi.ffi_call(PACK_INPUT_TARGET, _panels_out(n, k), vmap_method="sequential")
  attrs = dict(layer=np.int64(-1 if layer is None else layer), max_threads=np.int64(max_threads()))

  def reference(g, *ws):
    pick = (lambda a: a) if layer is None else (lambda a: a[layer])
    w = jnp.concatenate([pick(w) for w in ws], axis=1)
    return pack_panels_input_major(w, None if norm is None else pick(g), eps).panels
  panels = jax.lax.platform_dependent(gain, *ws, cpu=lambda *a: call(*a, **attrs), default=reference)
  return PackedWeight(panels, n, None if eps is None else float(eps))


def pack_output_major_op(w: jax.Array, norm: jax.Array | None = None, eps: float | None = None) -> PackedWeight:
  """`pack_panels(w, norm, eps)` for a float32 output-major W [N, K] in one pass (pack_panels.cc: each panel the
  transpose of 48 rows through a tile, the same panels bit for bit) when this lowers for CPU, the jnp reference on
  other platforms. Call `load()` first."""
  if w.ndim != 2 or w.dtype != jnp.float32:
    raise ValueError(f"pack_output_major_op wants a float32 weight [N, K], got {w.dtype}{list(w.shape)}.")
  _check_gain("pack_output_major_op", norm, eps, (w.shape[1],))
  gain = jnp.zeros((0,), jnp.float32) if norm is None else norm.astype(jnp.float32)
  call = jax.ffi.ffi_call(PACK_OUTPUT_TARGET, _panels_out(*w.shape), vmap_method="sequential")
  panels = jax.lax.platform_dependent(
      gain, w, cpu=lambda g, w: call(g, w, max_threads=np.int64(max_threads())),
      default=lambda g, w: pack_panels(w, None if norm is None else g, eps).panels)
  return PackedWeight(panels, w.shape[0], None if eps is None else float(eps))


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


def _update_shapes(qkv, cos, sin, slot, bias, keys, values, n_heads: int) -> None:
  """Raises ValueError unless the operands of `decode_attention_update` agree (float32, int32 slot, even hd)."""
  b, kh, hd, s = keys.shape if keys.ndim == 4 else (0, 0, 0, 0)
  want = dict(qkv=(b, (n_heads + 2 * kh) * hd), cos=(b, hd // 2), sin=(b, hd // 2), bias=(b, s), keys=(b, kh, hd, s),
              values=(b, kh, s, hd))
  got = dict(qkv=qkv.shape, cos=cos.shape, sin=sin.shape, bias=bias.shape, keys=keys.shape, values=values.shape)
  floats = (qkv, cos, sin, bias, keys, values)
  if (got != want or s == 0 or hd % 2 or kh == 0 or n_heads % kh or slot.shape not in ((), (b,))
          or not jnp.issubdtype(slot.dtype, jnp.integer) or any(a.dtype != jnp.float32 for a in floats)):
    raise ValueError(f"decode_attention_update wants float32 operands of shapes {want} (S > 0, even hd, {n_heads} "
                     f"query heads a multiple of the kv heads) and an integer slot [] or [{b}]; got {got}, slot "
                     f"{slot.dtype}{list(slot.shape)}, dtypes {[a.dtype for a in floats]}.")


def row_slots(slot: jax.Array, b: int, s: int) -> jax.Array:
  """The cache slot of each row as int32 [B]: a scalar slot clamped into [0, S) as `lax.dynamic_update_slice`
  does, a per-row slot with negative entries counted from the end (NumPy indexing; entries outside [0, S) then
  write nothing)."""
  slot = jnp.asarray(slot, jnp.int32)
  if slot.ndim == 0:
    return jnp.full((b,), jnp.clip(slot, 0, s - 1), jnp.int32)
  return jnp.where(slot < 0, slot + s, slot)


def decode_attention_update_reference(qkv, cos, sin, slot, bias, keys, values, n_heads: int, scale: float):
  """The new token's step in jnp: q, k, v = split(qkv), k's RoPE (`rotate_half` with cos/sin [B, hd/2]) written
  with v at each row's slot `slot` [B] (int32, none outside [0, S)), then attention of q's RoPE times `scale`
  over the updated cache → (out [B, H·hd], keys, values)."""
  b, kh, hd, _ = keys.shape
  nq = n_heads * hd
  q = rotate_half(qkv[:, :nq].reshape(b, n_heads, hd), cos[:, None], sin[:, None])
  k = rotate_half(qkv[:, nq:nq + kh * hd].reshape(b, kh, hd), cos[:, None], sin[:, None])
  rows = jnp.arange(b)
  keys = keys.at[rows, :, :, slot].set(k, mode="drop")
  values = values.at[rows, :, slot, :].set(qkv[:, nq + kh * hd:].reshape(b, kh, hd), mode="drop")
  out = decode_attention_reference((q * scale).reshape(b, kh, n_heads // kh, hd), keys, values, bias)
  return out.reshape(b, nq), keys, values


def decode_attention_update(qkv: jax.Array, cos: jax.Array, sin: jax.Array, slot: jax.Array, bias: jax.Array,
                            keys: jax.Array, values: jax.Array, n_heads: int, scale: float):
  """One decode step's attention from the q/k/v projection qkv [B, (H + 2K)·hd] (decode_attention.cc on CPU):
  RoPE of q and k (cos/sin [B, hd/2]), q scaled by `scale`, the new key and value written into the caches keys
  [B, K, hd, S] / values [B, K, S, hd] at `slot` (scalar, or one per row; see `row_slots`) in place (the caches
  are aliased to the results: donate them, or carry them in a loop, and XLA copies nothing), then attention over
  them with the additive mask bias [B, S] → (out [B, H·hd], keys, values). The jnp reference on other
  platforms. Call `load()` first."""
  slot = jnp.asarray(slot)
  _update_shapes(qkv, cos, sin, slot, bias, keys, values, n_heads)
  slot = row_slots(slot, keys.shape[0], keys.shape[-1])
  outs = (jax.ShapeDtypeStruct((qkv.shape[0], n_heads * keys.shape[2]), jnp.float32),
          jax.ShapeDtypeStruct(keys.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape, jnp.float32))
  call = jax.ffi.ffi_call(UPDATE_TARGET, outs, vmap_method="sequential", input_output_aliases={5: 1, 6: 2})
  attrs = dict(max_threads=np.int64(max_threads()), scale=np.float32(scale))
  return tuple(jax.lax.platform_dependent(
      qkv, cos, sin, slot, bias, keys, values, cpu=lambda *a: tuple(call(*a, **attrs)),
      default=lambda *a: decode_attention_update_reference(*a, n_heads=n_heads, scale=scale)))
