"""The decode step as `rl_jax.decode` computed it before its weights were fused and stored output-major: one
`x @ W` matmul per projection (q, k, v, o, gate, up, down), the tied embedding transposed into a [D, V] head
once per call, and the attention mask applied with a select after scaling the scores. Kept for `decode_bench`'s
side-by-side table only (same cache layout and sampler as `rl_jax.decode`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rl_jax.decode import DecodeCache, _write_slot
from rl_jax.models.llama import apply_rope, lm_head_weight, rms_norm, rope_frequencies


def previous_weights(params: dict, cfg) -> tuple:
  """(per-layer weight dicts [D_in, D_out], embedding, final norm, head [D, V])."""
  layers = tuple({name: w[i] for name, w in params["layers"].items()} for i in range(cfg.n_layers))
  return layers, params["embed"], params["final_norm"], lm_head_weight(params, cfg)


def _attention(q, cache_k, cache_v, allowed, cfg):
  b, kh, hd = q.shape[0], cfg.n_kv_heads, cfg.head_dim
  q = q.reshape(b, kh, cfg.n_heads // kh, hd).astype(jnp.float32)
  scores = jnp.einsum("bkgd,bkds->bkgs", q, cache_k.astype(jnp.float32)) / math.sqrt(hd)
  probs = jax.nn.softmax(jnp.where(allowed[:, None, None, :], scores, -1e30), axis=-1)
  return jnp.einsum("bkgs,bksd->bkgd", probs, cache_v.astype(jnp.float32)).reshape(b, cfg.n_heads * hd)


def _layer(cfg, inv_freq, x, lp, ck, cv, slot, positions, allowed):
  b = x.shape[0]
  h = rms_norm(x, lp["attn_norm"], cfg.rms_eps)
  q = (h @ lp["wq"]).reshape(b, 1, cfg.n_heads, cfg.head_dim)
  k = (h @ lp["wk"]).reshape(b, 1, cfg.n_kv_heads, cfg.head_dim)
  v = (h @ lp["wv"]).reshape(b, cfg.n_kv_heads, cfg.head_dim)
  q, k = apply_rope(q, positions[:, None], inv_freq)[:, 0], apply_rope(k, positions[:, None], inv_freq)[:, 0]
  ck, cv = _write_slot(ck, cv, k, v, slot)
  x = x + _attention(q, ck, cv, allowed, cfg).astype(x.dtype) @ lp["wo"]
  h = rms_norm(x, lp["mlp_norm"], cfg.rms_eps)
  return x + (jax.nn.silu(h @ lp["w_gate"]) * (h @ lp["w_up"])) @ lp["w_down"], ck, cv


def previous_decode_step(w: tuple, cfg, cache: DecodeCache, token, positions, slot, allowed):
  """Logits [B, V] and the updated cache, as `rl_jax.decode.decode_step` (Llama without QKV bias / QK-norm)."""
  layers, embed, final_norm, head = w
  inv_freq = rope_frequencies(cfg)
  x, ks, vs = embed[token], [], []
  for lp, ck, cv in zip(layers, cache.k, cache.v):
    x, ck, cv = _layer(cfg, inv_freq, x, lp, ck, cv, slot, positions, allowed)
    ks.append(ck)
    vs.append(cv)
  h = rms_norm(x, final_norm, cfg.rms_eps)
  return jnp.dot(h, head, preferred_element_type=jnp.float32), DecodeCache(tuple(ks), tuple(vs))
