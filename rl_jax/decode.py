"""The single-token decode step of the sampler, laid out for the memory traffic it cannot avoid.

One decode step at batch B reads every weight once and each row's filled keys/values once; its
compute floor is 2·params·B FLOPs. Four layout choices bring it closer to that floor on XLA:

- Per-layer weights and caches are separate arrays (`DecodeWeights.layers`, `DecodeCache.k/v` are
  tuples) and the layer loop is unrolled, so no step slices a stacked [L, ...] array (a dynamic
  slice inside a scan materialises each layer's weights and cache every step).
- Keys are stored [B, K, hd, S] and values [B, K, S, hd]: the two attention matmuls read them in the
  layout a batched matmul wants, with no per-step transpose of the cache.
- Projections that read the same input are one matmul (w_qkv, w_gu) and every weight is stored
  output-major [N, K], the operand layout XLA's CPU matmuls read fastest at a few dozen rows; the tied
  output projection is the embedding itself.
- The cache is only as long as the current bucket of the loop (see `rl_jax.sampling.generate`), so
  attention reads the filled prefix rounded up to a block, not the whole preallocated length.

On CPU the five projections can instead run through rl_jax's packed-panel kernel (`rl_jax.kernels.cpu`):
`decode_weights(..., cpu_kernels=True)` packs each float32 weight once per sampler call (in one pass, by the CPU
packing kernel) and `dense` sends a packed weight through the FFI call, so no step re-packs a weight as XLA's CPU
matmul does on every call; the projections that follow an RMSNorm carry its gain and normalise their input in the
kernel (`normed_dense`); with packed weights the attention over a float32 cache runs in the CPU kernel too, from
the q/k/v projection: RoPE of q and k, q's scaling, the write of the new key and value into the cache (updated in
place) and one pass over each head's cache (`rl_jax.kernels.cpu.decode_attention_update`).

Sampling draws one uniform per row and inverts the CDF (`sample_tokens`) instead of a Gumbel draw for
every vocabulary entry; with top-k/top-p it works among the top candidates only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl_jax.kernels import cpu as cpu_kernels_lib
from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import KVCache, lm_head_weight, rms_norm, rope_frequencies, rope_tables, rotate_half

Array = jax.Array


class DecodeWeights(NamedTuple):
  layers: tuple     # L dicts of one layer's weights, output-major (see `decode_weights`)
  embed: Array      # [V, D]
  final_norm: Array  # [D]
  head: Array       # [V, D] output projection, output-major (the embedding itself when tied: no copy)
# With cpu_kernels, w_qkv, w_o, w_gu, w_down and head are `rl_jax.kernels.cpu.PackedWeight`s.


class DecodeCache(NamedTuple):
  k: tuple          # L × [B, K, hd, S] keys, transposed for the q·kᵀ matmul
  v: tuple          # L × [B, K, S, hd] values


SOURCES = dict(w_qkv=("wq", "wk", "wv"), w_o=("wo",), w_gu=("w_gate", "w_up"), w_down=("w_down",))
# each projection of the decode step: the stacked input-major parameters [L, K, N_i] concatenated along N
NORM_OF = {"w_qkv": "attn_norm", "w_gu": "mlp_norm"}   # the RMSNorm gain a packed projection carries


def decode_weights(params: dict, cfg: ModelConfig, dtype=None, cpu_kernels: bool = False) -> DecodeWeights:
  """Per-layer decode weights (optionally cast, e.g. to bfloat16), each projection stored output-major [N, K]
  and the projections that read the same input concatenated: w_qkv [(H + 2K)·hd, D], w_gu [2F, D] (gate; up),
  w_o [D, H·hd], w_down [D, F]; b_qkv [(H + 2K)·hd] with qkv_bias. Built once per sampler call.
  cpu_kernels: the projections and the head packed for the CPU kernel (float32 weights only; see
  `resolve_cpu_kernels` for when that is safe), straight from the parameters' input-major layout."""
  cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
  st = params["layers"]
  rest = dict(attn_norm=st["attn_norm"], mlp_norm=st["mlp_norm"])
  if cfg.qkv_bias:
    rest["b_qkv"] = jnp.concatenate([st["bq"], st["bk"], st["bv"]], axis=1)
  if cfg.qk_norm:
    rest.update(q_norm=st["q_norm"], k_norm=st["k_norm"])
  head = cast(params["embed"] if cfg.tie_embeddings else params["lm_head"].T)
  if cpu_kernels and head.dtype == jnp.float32:
    return _packed_weights(params, cfg, cast, rest)
  inputs = {name: jnp.concatenate([st[s] for s in srcs], axis=2) for name, srcs in SOURCES.items()}   # [L, K, N]
  layers = tuple({**{name: cast(w[i]) for name, w in rest.items()},
                  **{name: cast(jnp.swapaxes(w[i], 0, 1)) for name, w in inputs.items()}} for i in range(cfg.n_layers))
  return DecodeWeights(layers, cast(params["embed"]), params["final_norm"], head)


def _packed_weights(params: dict, cfg: ModelConfig, cast, rest: dict) -> DecodeWeights:
  """`decode_weights` with the projections and the head as `PackedWeight`s, each packed by the CPU kernel in one
  pass from the stacked input-major parameters of SOURCES (`pack_input_major_op`: the layer's slice and the
  concatenation are never materialised), the gains of NORM_OF folded in; the tied head from the embedding
  (`pack_output_major_op`). The same panels as `pack_panels_input_major` / `pack_panels`, bit for bit."""
  eps, layers = cfg.rms_eps, []
  st = {name: cast(params["layers"][name]) for name in (*NORM_OF.values(), *sum(SOURCES.values(), ()))}
  for i in range(cfg.n_layers):
    lp = {name: cast(w[i]) for name, w in rest.items()}
    for name, srcs in SOURCES.items():
      norm = st[NORM_OF[name]] if name in NORM_OF else None
      lp[name] = cpu_kernels_lib.pack_input_major_op([st[s] for s in srcs], norm, None if norm is None else eps,
                                                     layer=i)
    layers.append(lp)
  if cfg.tie_embeddings:
    head = cpu_kernels_lib.pack_output_major_op(cast(params["embed"]), params["final_norm"], eps)
  else:
    head = cpu_kernels_lib.pack_input_major_op([cast(params["lm_head"])], params["final_norm"], eps)
  return DecodeWeights(tuple(layers), cast(params["embed"]), params["final_norm"], head)


PROJECTIONS = ("w_qkv", "w_o", "w_gu", "w_down")
# Packed for the CPU kernels, w_qkv, w_gu and the head carry their input's RMSNorm gain (attn_norm, mlp_norm,
# final_norm) and normalise their input in the kernel (`normed_dense`).


def resolve_cpu_kernels(cpu_kernels: bool | None, devices=None) -> bool:
  """Whether the sampler packs its weights for the CPU kernel. None (auto): yes when the computation runs on a
  single CPU device (`devices`, default every device of this process) and the kernel library loads (it is
  compiled on first use; RL_JAX_CPU_KERNELS=0 turns it off). Never on several devices: a custom call has no
  sharding rule. True requires the library (error if it cannot be built); False is XLA's matmuls."""
  if cpu_kernels is None:
    devices = jax.devices() if devices is None else list(devices)
    return len(devices) == 1 and devices[0].platform == "cpu" and cpu_kernels_lib.load()
  if cpu_kernels and not cpu_kernels_lib.load():
    raise RuntimeError("cpu_kernels=True but rl_jax's CPU kernel library could not be built or is disabled "
                       f"({cpu_kernels_lib.ops.ENV}); see the log line above, or pass cpu_kernels=None/False.")
  return bool(cpu_kernels)


def decode_cache_from(cache: KVCache) -> DecodeCache:
  """A stacked prefill cache [L, B, S, K, hd] in the decode layout."""
  n = cache.k.shape[0]
  return DecodeCache(tuple(jnp.transpose(cache.k[i], (0, 2, 3, 1)) for i in range(n)),
                     tuple(jnp.transpose(cache.v[i], (0, 2, 1, 3)) for i in range(n)))


def grow_cache(cache: DecodeCache, length: int) -> DecodeCache:
  """Zero-pads every layer's cache to `length` slots."""
  def pad(a, axis):
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, length - a.shape[axis])
    return jnp.pad(a, widths)
  return DecodeCache(tuple(pad(k, 3) for k in cache.k), tuple(pad(v, 2) for v in cache.v))


def repeat_rows(tree, n: int):
  """Repeats every leaf's batch axis n times (row i → rows i·n … i·n + n − 1): a group shares its prompt cache."""
  return jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), tree) if n > 1 else tree


def _write_slot(cache_k: Array, cache_v: Array, k: Array, v: Array, slot: Array) -> tuple[Array, Array]:
  """Writes k/v [B, K, hd] at cache slot `slot` (a scalar, or one slot per row [B])."""
  if jnp.ndim(slot) == 0:
    cache_k = jax.lax.dynamic_update_slice(cache_k, k[..., None].astype(cache_k.dtype), (0, 0, 0, slot))
    cache_v = jax.lax.dynamic_update_slice(cache_v, v[:, :, None].astype(cache_v.dtype), (0, 0, slot, 0))
    return cache_k, cache_v
  rows = jnp.arange(k.shape[0])
  return (cache_k.at[rows, :, :, slot].set(k.astype(cache_k.dtype)),
          cache_v.at[rows, :, slot, :].set(v.astype(cache_v.dtype)))


def dense(x: Array, w, preferred_element_type=None) -> Array:
  """x [B, K] · wᵀ for an output-major weight w [N, K] → [B, N] (the layout a small-batch matmul reads fastest
  on XLA's CPU backend; the contraction runs over both minor axes); a `PackedWeight` goes through the CPU
  kernel (float32)."""
  if isinstance(w, cpu_kernels_lib.PackedWeight):
    return cpu_kernels_lib.packed_dense(x, w)
  return jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=preferred_element_type)


def normed_dense(x: Array, norm: Array, w, eps: float, preferred_element_type=None) -> Array:
  """rms_norm(x, norm, eps) · wᵀ: in the CPU kernel when w is a `PackedWeight` that carries the norm (its gain
  folded into w, the row scale 1/√(mean(x²) + eps) applied to the kernel's output; arXiv:1910.07467), else the
  norm in XLA and `dense`."""
  if isinstance(w, cpu_kernels_lib.PackedWeight) and w.rms_eps is not None:
    return cpu_kernels_lib.packed_dense(x.astype(jnp.float32), w)
  return dense(rms_norm(x, norm, eps), w, preferred_element_type)


def attention_bias(allowed: Array) -> Array:
  """Additive mask [B, S]: 0 where a slot may be attended, −1e30 elsewhere (one per step, shared by all layers)."""
  return jnp.where(allowed, 0.0, -1e30).astype(jnp.float32)


def _cache_attention(q: Array, cache_k: Array, cache_v: Array, bias: Array, cfg: ModelConfig) -> Array:
  """softmax(q·kᵀ/√hd + bias) v for one query per row: q [B, H, hd], bias [B, S] → [B, H·hd] (float32 math;
  q is scaled before the product, exact when hd is a power of 4)."""
  b = q.shape[0]
  kh, hd = cfg.n_kv_heads, cfg.head_dim
  q = q.reshape(b, kh, cfg.n_heads // kh, hd).astype(jnp.float32) * (1.0 / math.sqrt(hd))
  scores = jnp.einsum("bkgd,bkds->bkgs", q, cache_k.astype(jnp.float32)) + bias[:, None, None, :]
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bkgs,bksd->bkgd", probs, cache_v.astype(jnp.float32)).reshape(b, kh * (cfg.n_heads // kh) * hd)


def _qkv_heads(qkv: Array, lp: dict, cfg: ModelConfig) -> tuple[Array, Array, Array]:
  """q [B, H, hd], k and v [B, K, hd] of the fused projection (q and k RMS-normalised per head with qk_norm)."""
  b, hd = qkv.shape[0], cfg.head_dim
  nq, nk = cfg.n_heads * hd, cfg.n_kv_heads * hd
  q, k = qkv[:, :nq].reshape(b, cfg.n_heads, hd), qkv[:, nq:nq + nk].reshape(b, cfg.n_kv_heads, hd)
  if cfg.qk_norm:
    q, k = rms_norm(q, lp["q_norm"], cfg.rms_eps), rms_norm(k, lp["k_norm"], cfg.rms_eps)
  return q, k, qkv[:, nq + nk:].reshape(b, cfg.n_kv_heads, hd)


def _attention(cfg: ModelConfig, rope: tuple[Array, Array], qkv: Array, lp: dict, cache_k: Array, cache_v: Array,
               slot: Array, bias: Array, cpu_kernel: bool) -> tuple[Array, Array, Array]:
  """The new token's attention from its q/k/v projection [B, (H + 2K)·hd]: RoPE of q and k (cos/sin [B, hd/2]),
  k/v written at `slot`, attention over the cache → ([B, H·hd], cache_k, cache_v). cpu_kernel (float32 cache):
  all of it in one pass over each head's cache in `rl_jax.kernels.cpu.decode_attention_update`, the cache updated
  in place."""
  cos, sin = rope
  if cpu_kernel and cache_k.dtype == jnp.float32:
    if cfg.qk_norm:
      qkv = jnp.concatenate([a.reshape(a.shape[0], -1) for a in _qkv_heads(qkv, lp, cfg)], axis=1)
    return cpu_kernels_lib.decode_attention_update(qkv.astype(jnp.float32), cos, sin, slot, bias, cache_k, cache_v,
                                                   cfg.n_heads, 1.0 / math.sqrt(cfg.head_dim))
  q, k, v = _qkv_heads(qkv, lp, cfg)
  q, k = rotate_half(q, cos[:, None], sin[:, None]), rotate_half(k, cos[:, None], sin[:, None])
  cache_k, cache_v = _write_slot(cache_k, cache_v, k, v, slot)
  return _cache_attention(q, cache_k, cache_v, bias, cfg), cache_k, cache_v


def decode_layer(cfg: ModelConfig, rope: tuple[Array, Array], x: Array, lp: dict, cache_k: Array, cache_v: Array,
                 slot: Array, bias: Array, cpu_attention: bool = True) -> tuple[Array, Array, Array]:
  """One pre-norm decoder block for one token per row: x [B, D], RoPE tables rope = (cos, sin) [B, hd/2] of the
  rows' positions; writes this token's k/v at `slot` first, then attends over the cache with the additive mask
  `bias` [B, S] (through the CPU kernel when the weights are packed for the CPU kernels, unless cpu_attention is
  False)."""
  qkv = normed_dense(x, lp["attn_norm"], lp["w_qkv"], cfg.rms_eps)
  if cfg.qkv_bias:
    qkv = qkv + lp["b_qkv"][None, :]
  kernel = cpu_attention and isinstance(lp["w_o"], cpu_kernels_lib.PackedWeight)
  attn, cache_k, cache_v = _attention(cfg, rope, qkv, lp, cache_k, cache_v, slot, bias, kernel)
  x = x + dense(attn.astype(x.dtype), lp["w_o"])
  gu = normed_dense(x, lp["mlp_norm"], lp["w_gu"], cfg.rms_eps)
  f = cfg.ffn_dim
  x = x + dense(jax.nn.silu(gu[:, :f]) * gu[:, f:], lp["w_down"])
  return x, cache_k, cache_v


def decode_step(w: DecodeWeights, cfg: ModelConfig, cache: DecodeCache, token: Array, positions: Array, slot: Array,
                allowed: Array, cpu_attention: bool = True) -> tuple[Array, DecodeCache]:
  """Logits [B, V] (float32) of the next token after `token` [B] at `positions` [B], written at cache `slot`;
  `allowed` [B, S] marks the cache slots each row may attend. With weights packed for the CPU kernels
  (`decode_weights(..., cpu_kernels=True)`) the attention runs in the CPU kernel too, unless cpu_attention is
  False (for comparisons)."""
  rope = rope_tables(positions, rope_frequencies(cfg))
  bias = attention_bias(allowed)
  x = w.embed[token]
  ks, vs = [], []
  for lp, ck, cv in zip(w.layers, cache.k, cache.v):
    x, ck, cv = decode_layer(cfg, rope, x, lp, ck, cv, slot, bias, cpu_attention)
    ks.append(ck)
    vs.append(cv)
  logits = normed_dense(x, w.final_norm, w.head, cfg.rms_eps, preferred_element_type=jnp.float32)
  return logits, DecodeCache(tuple(ks), tuple(vs))
