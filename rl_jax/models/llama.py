"""Llama-family decoder as pure functions over a parameter pytree (plain nested dicts of arrays).

Covers Llama 3 / SmolLM2 (RoPE, GQA, RMSNorm, SwiGLU, tied or untied embeddings), Qwen2/2.5
(QKV bias) and Qwen3 (per-head RMS QK-norm). Layers are stacked along a leading axis and run with
`jax.lax.scan`, so compile time does not grow with depth. Parameters are stored float32; `cfg.dtype="bfloat16"`
computes in bfloat16 from them (mixed precision) with float32 norms, softmax and logits.

Parameter tree:
  embed [V, D]; final_norm [D]; lm_head [D, V] (absent when tied)
  layers: attn_norm [L, D], wq [L, D, H·hd], wk [L, D, K·hd], wv [L, D, K·hd], wo [L, H·hd, D],
          (bq [L, H·hd], bk, bv with qkv_bias), (q_norm [L, hd], k_norm [L, hd] with qk_norm),
          mlp_norm [L, D], w_gate [L, D, F], w_up [L, D, F], w_down [L, F, D]
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from rl_jax.models.config import ModelConfig

Array = jax.Array


def init_params(cfg: ModelConfig, rng: Array) -> dict:
  """Random parameters (normal, std 0.02; output projections scaled by 1/sqrt(2L))."""
  keys = iter(jax.random.split(rng, 16))
  L, D, H, K, hd, F, V = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
  normal = lambda shape, std=0.02: std * jax.random.normal(next(keys), shape, jnp.float32)
  out_std = 0.02 / math.sqrt(2 * L)
  layers = {
      "attn_norm": jnp.ones((L, D)), "wq": normal((L, D, H * hd)), "wk": normal((L, D, K * hd)),
      "wv": normal((L, D, K * hd)), "wo": normal((L, H * hd, D), out_std), "mlp_norm": jnp.ones((L, D)),
      "w_gate": normal((L, D, F)), "w_up": normal((L, D, F)), "w_down": normal((L, F, D), out_std),
  }
  if cfg.qkv_bias:
    layers.update(bq=jnp.zeros((L, H * hd)), bk=jnp.zeros((L, K * hd)), bv=jnp.zeros((L, K * hd)))
  if cfg.qk_norm:
    layers.update(q_norm=jnp.ones((L, hd)), k_norm=jnp.ones((L, hd)))
  params = {"embed": normal((V, D)), "final_norm": jnp.ones((D,)), "layers": layers}
  if not cfg.tie_embeddings:
    params["lm_head"] = normal((D, V))
  return params


def rms_scale(x: Array, eps: float) -> Array:
  """x / √(mean(x²) + eps) over the last axis: RMSNorm without its gain (Zhang & Sennrich, arXiv:1910.07467)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
  """x / sqrt(mean(x²) + eps) · weight, computed in float32."""
  y = rms_scale(x.astype(jnp.float32), eps)
  return (y * weight.reshape((1,) * (y.ndim - 1) + (-1,))).astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> Array:
  """Inverse frequencies [hd/2], with Llama-3 style scaling when cfg.rope_scaling asks for it."""
  hd = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  scaling = dict(cfg.rope_scaling or ())
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind == "llama3":
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * jnp.pi / inv
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = jnp.where(wavelen > old_len / low, inv / factor, inv)
    mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    inv = jnp.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
  elif kind == "linear":
    inv = inv / scaling["factor"]
  elif kind not in (None, "default"):
    raise ValueError(f"Unsupported rope_scaling type {kind!r}; supported: llama3, linear, default.")
  return inv


def rope_tables(positions: Array, inv_freq: Array) -> tuple[Array, Array]:
  """cos and sin of the RoPE angles positions · inv_freq (arXiv:2104.09864): positions [...] → [..., hd/2] each."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq.reshape((1,) * positions.ndim + inv_freq.shape)
  return jnp.cos(angles), jnp.sin(angles)


def rotate_half(x: Array, cos: Array, sin: Array) -> Array:
  """x [..., hd] rotated in the half-split layout (HF "rotate_half"): [x1·cos − x2·sin, x2·cos + x1·sin] for the
  halves x1, x2 and cos/sin [..., hd/2] broadcast against them (float32 math, x's dtype out)."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotary embedding, half-split layout (HF "rotate_half"): x [B, S, N, hd], positions [B, S]."""
  cos, sin = rope_tables(positions, inv_freq)                                          # [B, S, hd/2]
  return rotate_half(x, cos[:, :, None, :], sin[:, :, None, :])


class KVCache(NamedTuple):
  """Per-layer keys/values [L, B, S_max, K, hd] and the number of filled positions."""
  k: Array
  v: Array


BATCH_AXES = ("data", "fsdp")   # rl_jax.sharding's batch axes


def constrain_rows(x: Array, axis: int = 0) -> Array:
  """Pins `axis` of an activation to the mesh's batch axes when traced under a mesh (`jax.set_mesh`), so the
  compiler keeps every device on its own rows instead of gathering the batch; without a mesh (or when the
  batch axes do not divide the rows) it returns x unchanged."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return x
  if x.shape[axis] % math.prod(mesh.shape[a] for a in BATCH_AXES):
    return x
  spec = [None] * x.ndim
  spec[axis] = BATCH_AXES
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*spec))


def compute_dtype(cfg: ModelConfig):
  """The dtype the forward computes in (cfg.dtype); parameters are stored in their own (master) dtype."""
  return jnp.dtype(cfg.dtype)


def sampler_dtype(cfg: ModelConfig):
  """The `dtype` the sampler (rl_jax.sampling.generate) runs weights and KV cache in: None (the parameters'
  own) for a float32 model, the compute dtype otherwise (a bfloat16 model keeps a bfloat16 cache)."""
  return None if cfg.dtype == "float32" else compute_dtype(cfg)


def cast_params(params: dict, cfg: ModelConfig) -> dict:
  """Floating-point parameters cast to the compute dtype (mixed precision: float32 master, bfloat16 use).

  Under jit the cast happens on each shard, so an FSDP all-gather then moves compute-dtype bytes.
  """
  dt = compute_dtype(cfg)
  return jax.tree.map(lambda p: p.astype(dt) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  """Zero KV cache; its dtype is the compute dtype unless given (a bfloat16 model keeps a bfloat16 cache)."""
  dtype = compute_dtype(cfg) if dtype is None else dtype
  shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  return KVCache(constrain_rows(jnp.zeros(shape, dtype), 1), constrain_rows(jnp.zeros(shape, dtype), 1))


@jax.custom_vjp
def project(x: Array, *ws: Array) -> tuple[Array, ...]:
  """(x · W₁, …, x · W_n) for x [..., D] and weights W_i [D, F_i]: the projections of one input.

  Custom VJP (the same values as autodiff): ∂x = Σ_i dy_i · W_iᵀ and ∂W_i = xᵀ · dy_i over all rows
  (`weight_grads`), so the projections of one input share one xᵀ on CPU.
  """
  return tuple(x @ w for w in ws)


def _project_fwd(x, *ws):
  return project(x, *ws), (x, ws)


def _project_bwd(res, cts):
  x, ws = res
  dx = sum(jax.lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ()))) for dy, w in zip(cts, ws))
  dws = weight_grads(x.reshape(-1, x.shape[-1]), tuple(dy.reshape(-1, dy.shape[-1]) for dy in cts))
  return (dx.astype(x.dtype),) + tuple(dw.astype(w.dtype) for dw, w in zip(dws, ws))


project.defvjp(_project_fwd, _project_bwd)


SAVEABLE = ("projection", "attention")   # checkpoint_names of what remat_policy "dots" keeps (`saveable`)


def saveable(ys: tuple[Array, ...], name: str = "projection") -> tuple[Array, ...]:
  """ys unchanged, named for the remat policy (jax.ad_checkpoint.checkpoint_name): "projection" for the layer
  projection outputs, "attention" for the attention output (the input of the output projection).

  The down projection is not tagged: its output only enters the residual sum, which the backward never reads.
  """
  return tuple(checkpoint_name(y, name) for y in ys)


def weight_grads(x: Array, dys: tuple[Array, ...]) -> tuple[Array, ...]:
  """∂W_i = xᵀ · dy_i [D, F_i] for x [N, D] and dy_i [N, F_i] (in their dtype), summed over the N rows.

  On CPU, xᵀ [D, N] is materialised once (an optimisation barrier keeps XLA from folding it back into the
  products) and each product is a plain [D, N] × [N, F_i] matmul, the form XLA:CPU's fast matmul path takes;
  left to itself XLA contracts over rows with the Eigen path, on a transposed copy of every dy_i. Other
  platforms contract over the rows directly.
  """
  def cpu(x, *dys):
    xt = jax.lax.optimization_barrier(x.T)
    return tuple(jnp.dot(xt, dy) for dy in dys)

  def default(x, *dys):
    return tuple(jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ()))) for dy in dys)

  return jax.lax.platform_dependent(x, *dys, cpu=cpu, default=default)


def _attention(q, k, v, allowed, cfg):
  """q [B, S, H, hd], k/v [B, S_k, K, hd], allowed [B, S, S_k] bool → [B, S, H·hd]."""
  b, s, h, hd = q.shape
  groups = h // cfg.n_kv_heads
  q = q.reshape(b, s, cfg.n_kv_heads, groups, hd)
  scores = jnp.einsum("bskgd,btkd->bkgst", q.astype(jnp.float32), k.astype(jnp.float32)) / math.sqrt(hd)
  scores = jnp.where(allowed[:, None, None, :, :], scores, -1e30)
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bkgst,btkd->bskgd", probs, v.astype(jnp.float32))
  return out.reshape(b, s, h * hd).astype(q.dtype)


def _chunked_attention(q, k, v, allowed, cfg):
  """softmax(q kᵀ / √hd + mask) v one block of cfg.attn_chunk queries at a time (same shapes as `_attention`).

  Exact (each query row's softmax is over all keys); the float32 scores are [B, H, C, S_k] per block instead of
  [B, H, S, S_k], and each block is recomputed in the backward pass (memory-efficient attention, Rabe & Staats,
  arXiv 2112.05682, blocked over queries only). Products run in the input dtype with float32 accumulation.
  """
  b, s, h, hd = q.shape
  c, kh = cfg.attn_chunk, cfg.n_kv_heads
  n = -(-s // c)
  pad = n * c - s
  qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, c, kh, h // kh, hd).swapaxes(0, 1)
  ab = jnp.pad(allowed, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, -1).swapaxes(0, 1)

  @jax.checkpoint
  def block(_, xs):
    qc, ac = xs
    scores = jnp.einsum("bckgd,btkd->bkgct", qc, k.astype(qc.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(ac[:, None, None, :, :], scores / math.sqrt(hd), -1e30)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgct,btkd->bckgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return None, out.astype(q.dtype)

  _, out = jax.lax.scan(block, None, (qb, ab))                       # [n, B, C, K, G, hd]
  return out.swapaxes(0, 1).reshape(b, n * c, h * hd)[:, :s]


def attend(q, k, v, allowed, cfg):
  """Attention of `_layer`: query-blocked when cfg.attention == "chunked" and there is more than one block."""
  if cfg.attention == "chunked" and q.shape[1] > cfg.attn_chunk:
    return _chunked_attention(q, k, v, allowed, cfg)
  return _attention(q, k, v, allowed, cfg)


def _layer(cfg, inv_freq, x, lp, positions, allowed, cache_kv=None, cache_index=None, attention=None):
  """One pre-norm decoder block. With a cache, writes this step's k/v at cache_index first. `attention`
  (q, k, v) -> [B, S, H·hd] replaces the masked attention of `allowed` when given."""
  b, s, _ = x.shape
  h = rms_norm(x, lp["attn_norm"], cfg.rms_eps)
  q, k, v = saveable(project(h, lp["wq"], lp["wk"], lp["wv"]))
  if cfg.qkv_bias:
    q, k, v = q + lp["bq"][None, None, :], k + lp["bk"][None, None, :], v + lp["bv"][None, None, :]
  q = q.reshape(b, s, cfg.n_heads, cfg.head_dim)
  k = k.reshape(b, s, cfg.n_kv_heads, cfg.head_dim)
  v = v.reshape(b, s, cfg.n_kv_heads, cfg.head_dim)
  if cfg.qk_norm:
    q, k = rms_norm(q, lp["q_norm"], cfg.rms_eps), rms_norm(k, lp["k_norm"], cfg.rms_eps)
  q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
  new_kv = None
  if cache_kv is not None:
    # cache_kv = (all layers' keys, values [L, B, S_max, K, hd], this layer's index): written in place
    # inside the layer scan's carry, so a decode step never copies the whole cache.
    ck, cv, layer = cache_kv
    ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], (layer, 0, cache_index, 0, 0))
    cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], (layer, 0, cache_index, 0, 0))
    k, v, new_kv = ck[layer], cv[layer], (ck, cv)
  att, = saveable((attend(q, k, v, allowed, cfg) if attention is None else attention(q, k, v),), "attention")
  x = x + saveable(project(att, lp["wo"]))[0]
  h = rms_norm(x, lp["mlp_norm"], cfg.rms_eps)
  gate, up = saveable(project(h, lp["w_gate"], lp["w_up"]))
  x = x + project(jax.nn.silu(gate) * up, lp["w_down"])[0]
  return x, new_kv


def causal_mask(attn_mask: Array) -> Array:
  """[B, S] padding mask → [B, S, S] allowed (causal and both ends valid; a query always sees itself)."""
  s = attn_mask.shape[1]
  causal = jnp.tril(jnp.ones((s, s), bool))[None]
  valid = attn_mask.astype(bool)
  return (causal & valid[:, None, :] & valid[:, :, None]) | jnp.eye(s, dtype=bool)[None]


def default_positions(attn_mask: Array) -> Array:
  """Positions counting valid tokens only (left padding gets position 0)."""
  return jnp.maximum(jnp.cumsum(attn_mask.astype(jnp.int32), axis=-1) - 1, 0)


def hidden_states(params: dict, tokens: Array, cfg: ModelConfig, *, positions: Optional[Array] = None,
                  attn_mask: Optional[Array] = None, attention: Optional[Callable] = None) -> Array:
  """Final-norm hidden states [B, S, D] for tokens [B, S] (no cache).

  `attention` (q [B, S, H, hd], k, v [B, S, K, hd]) -> [B, S, H·hd] replaces the causal padding-masked attention
  (packed sequences: rl_jax.prefix_grouper.grouped_attention); `positions` must then be given.

  The layers run as one `jax.lax.scan` over the stacked parameters (compile time independent of depth), or
  unrolled with cfg.unroll_layers: no loop, so XLA reads each layer's weights in place instead of slicing them
  out of the stack and writes no per-iteration stacks of saved activations and weight gradients. Same values up
  to float rounding; on CPU the SmolLM2-135M packed train step took 5.68 instead of 6.02 CPU s for 11 s more
  compilation (README, "Full RL step").
  """
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [B, S], got shape {tokens.shape}.")
  if attention is not None and positions is None:
    raise ValueError("hidden_states: an explicit `attention` needs explicit `positions`.")
  if attn_mask is None:
    attn_mask = jnp.ones(tokens.shape, jnp.int32)
  if positions is None:
    positions = default_positions(attn_mask)
  allowed = None if attention is not None else causal_mask(attn_mask)
  inv_freq = rope_frequencies(cfg)
  params = cast_params(params, cfg)
  x = constrain_rows(params["embed"][tokens])

  def body(x, lp):
    x, _ = _layer(cfg, inv_freq, x, lp, positions, allowed, attention=attention)
    return constrain_rows(x), None

  if cfg.remat:
    body = jax.checkpoint(body, policy=remat_policy(cfg))

  x, _ = jax.lax.scan(body, x, params["layers"], unroll=cfg.n_layers if cfg.unroll_layers else 1)
  return rms_norm(x, params["final_norm"], cfg.rms_eps)


def remat_policy(cfg: ModelConfig):
  """jax.checkpoint policy of cfg.remat_policy: "full" saves nothing inside a layer (the backward recomputes its
  whole forward), "dots" keeps what `saveable` names (q, k, v, the attention output and its projection, gate,
  up), so the backward recomputes only the layer's elementwise ops (norms, RoPE, SwiGLU) and, inside the
  attention's own backward, its scores.

  The projections run inside a custom VJP (`project`), whose matmuls a dot-based policy
  (jax.checkpoint_policies.dots_with_no_batch_dims_saveable) does not see: it would save nothing more than "full".
  """
  return None if cfg.remat_policy == "full" else jax.checkpoint_policies.save_only_these_names(*SAVEABLE)


def lm_head_weight(params: dict, cfg: ModelConfig) -> Array:
  """Output projection [D, V] (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def forward(params: dict, tokens: Array, cfg: ModelConfig, *, positions: Optional[Array] = None,
            attn_mask: Optional[Array] = None) -> Array:
  """Logits [B, S, V] (float32)."""
  h = hidden_states(params, tokens, cfg, positions=positions, attn_mask=attn_mask)
  return jnp.dot(h, lm_head_weight(cast_params(params, cfg), cfg), preferred_element_type=jnp.float32)


def forward_with_cache(params: dict, tokens: Array, cfg: ModelConfig, cache: KVCache, cache_index: Array,
                       positions: Array, key_valid: Array, *, last_only: bool = False) -> tuple[Array, KVCache]:
  """Runs tokens [B, S] at cache slots [cache_index, cache_index + S) and returns (logits [B, S, V], cache).

  key_valid [B, S_max]: which cache slots hold real (non-padding) tokens, including the new ones.
  last_only: project only the last position to the vocabulary (logits [B, 1, V]); a prefill needs
  nothing else, and skips a [B, S, V] matmul.
  """
  b, s = tokens.shape
  s_max = cache.k.shape[2]
  slots = cache_index + jnp.arange(s)
  allowed = (jnp.arange(s_max)[None, None, :] <= slots[None, :, None]) & key_valid[:, None, :].astype(bool)
  inv_freq = rope_frequencies(cfg)
  params = cast_params(params, cfg)
  x = constrain_rows(params["embed"][tokens])

  def body(carry, layer):
    x, ks, vs = carry
    lp, i = layer
    x, (ks, vs) = _layer(cfg, inv_freq, x, lp, positions, allowed, (ks, vs, i), cache_index)
    return (constrain_rows(x), constrain_rows(ks, 1), constrain_rows(vs, 1)), None

  (x, ks, vs), _ = jax.lax.scan(body, (x, cache.k, cache.v), (params["layers"], jnp.arange(cfg.n_layers)))
  if last_only:
    x = x[:, -1:]
  h = rms_norm(x, params["final_norm"], cfg.rms_eps)
  return jnp.dot(h, lm_head_weight(params, cfg), preferred_element_type=jnp.float32), KVCache(ks, vs)
