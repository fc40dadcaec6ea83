"""Prefix Grouper: encode a group's shared prompt once, then its G completions against that prompt's
keys/values (shared-prefix forward). Forward log-probs and gradients equal the standard forward on
G copies of prompt + completion, because causal attention makes the prompt's states independent of
the completions, and the gradient through the one shared copy is the sum of the G copies' gradients.

`grouped_logprobs` does it for one group through the KV cache (prompt at batch 1, completions padded to a
common length); `packed_logprobs` for a whole batch on the packed layout of `rl_jax.packing` (every group's
prompt once, completions unpadded, several groups per row), where the shared prefix is an attention mask.

"Prefix Grouper: Efficient GRPO Training through Shared-Prefix Forward", arXiv 2506.05433.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rl_jax.logprobs import logprobs_from_hidden
from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import KVCache, cast_params, constrain_rows, forward_with_cache, hidden_states, init_cache, \
    lm_head_weight

Array = jax.Array


def grouped_logprobs(params: dict, cfg: ModelConfig, prefix: Array, suffixes: Array, suffix_mask: Array) -> Array:
  """Log-probs [G, Ls] of each completion's tokens given one shared, unpadded prompt.

  Args:
    prefix: [Lp] int32 prompt tokens (no padding).
    suffixes: [G, Ls] int32 completions (right-padded); suffix_mask [G, Ls] marks real tokens.
  The prompt runs once (batch 1); its per-layer K/V are broadcast to the G completions, which run at
  positions Lp.. with a key mask [prompt ; own completion]. The logit at the prompt's last position
  scores every completion's first token.
  """
  lp = prefix.shape[0]
  g, ls = suffixes.shape
  if lp + ls > cfg.max_seq_len:
    raise ValueError(f"prompt {lp} + completion {ls} tokens exceed max_seq_len={cfg.max_seq_len}.")
  s_max = lp + ls
  cache = init_cache(cfg, 1, s_max)
  valid_prefix = jnp.concatenate([jnp.ones((1, lp), jnp.int32), jnp.zeros((1, ls), jnp.int32)], axis=1)
  prefix_logits, cache = forward_with_cache(params, prefix[None], cfg, cache, 0, jnp.arange(lp)[None], valid_prefix)
  shared = KVCache(jnp.broadcast_to(cache.k, (cfg.n_layers, g) + cache.k.shape[2:]),
                   jnp.broadcast_to(cache.v, (cfg.n_layers, g) + cache.v.shape[2:]))
  key_valid = jnp.concatenate([jnp.ones((g, lp), jnp.int32), suffix_mask.astype(jnp.int32)], axis=1)
  positions = jnp.broadcast_to(lp + jnp.arange(ls)[None], (g, ls))
  suffix_logits, _ = forward_with_cache(params, suffixes, cfg, shared, lp, positions, key_valid)
  first = jnp.broadcast_to(prefix_logits[:, -1], (g, prefix_logits.shape[-1]))[:, None]       # [G, 1, V]
  logits = jnp.concatenate([first, suffix_logits[:, :-1]], axis=1)                             # predicts suffixes
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), suffixes[..., None], -1)[..., 0]
  return logp * suffix_mask


def packed_mask(segment: Array, member: Array) -> Array:
  """Shared-prefix attention on packed rows: allowed [R, S, S] (query i, key j) =
  j ≤ i ∧ seg_i = seg_j > 0 ∧ (mem_j = 0 ∨ mem_j = mem_i), and i = j always (a padding position sees itself,
  so its softmax is defined). Prompt tokens (mem 0) see their prompt; completion j its prompt and itself."""
  s = segment.shape[1]
  return _allowed(jnp.arange(s), jnp.arange(s), segment, member, segment, member)


def _allowed(qi, kj, q_seg, q_mem, k_seg, k_mem):
  """`packed_mask` for query indices qi [C] and key indices kj [W] with their segments/members [R, C], [R, W]."""
  causal = (kj[None, :] <= qi[:, None])[None]
  same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] > 0)
  prefix_or_own = (k_mem[:, None, :] == 0) | (q_mem[:, :, None] == k_mem[:, None, :])
  return (causal & same & prefix_or_own) | (kj[None, :] == qi[:, None])[None]


def banded_attention(q: Array, k: Array, v: Array, segment: Array, member: Array, window: int, cfg: ModelConfig,
                     chunk: int = 0) -> Array:
  """softmax(q kᵀ/√hd + `packed_mask`) v on packed rows, one block of C queries at a time against the
  window + C keys before and inside it: exact when no span is longer than `window` (a query's keys all lie
  in its own span), and C·(window + C) scores per block instead of C·S (the rows can be long).

  q [R, S, H, hd], k/v [R, S, K, hd] → [R, S, H·hd]; C = `chunk` or min(cfg.attn_chunk, max(16, window/4)).
  Products in float32 for cfg.attention == "full" (as `_attention`), else in the input dtype with float32
  accumulation; each block is recomputed in the backward pass.
  """
  r, s, h, hd = q.shape
  kh = k.shape[2]
  c = min(chunk or min(cfg.attn_chunk, max(16, window // 4)), s)
  n = -(-s // c)
  end = n * c - s
  dt = jnp.float32 if cfg.attention == "full" else q.dtype
  qb = jnp.pad(q, ((0, 0), (0, end), (0, 0), (0, 0))).astype(dt).reshape(r, n, c, kh, h // kh, hd).swapaxes(0, 1)
  blocks = lambda x: jnp.pad(x, ((0, 0), (0, end))).reshape(r, n, c).swapaxes(0, 1)
  front = lambda x: jnp.pad(x, ((0, 0), (window, end)) + ((0, 0),) * (x.ndim - 2))
  kp, vp, seg_k, mem_k = front(k.astype(dt)), front(v.astype(dt)), front(segment), front(member)

  @jax.checkpoint
  def block(_, xs):
    i, qc, q_seg, q_mem = xs
    sl = lambda x: jax.lax.dynamic_slice_in_dim(x, i * c, window + c, axis=1)    # original keys i·c − window ..
    kc, vc = sl(kp), sl(vp)
    allowed = _allowed(i * c + jnp.arange(c), i * c - window + jnp.arange(window + c), q_seg, q_mem,
                       sl(seg_k), sl(mem_k))
    scores = jnp.einsum("bckgd,btkd->bkgct", qc, kc, preferred_element_type=jnp.float32) / math.sqrt(hd)
    probs = jax.nn.softmax(jnp.where(allowed[:, None, None], scores, -1e30), axis=-1)
    out = jnp.einsum("bkgct,btkd->bckgd", probs.astype(dt), vc, preferred_element_type=jnp.float32)
    return None, out.astype(q.dtype)

  _, out = jax.lax.scan(block, None, (jnp.arange(n), qb, blocks(segment), blocks(member)))
  return out.swapaxes(0, 1).reshape(r, n * c, h * hd)[:, :s]


def scatter_rows(values: Array, dest: Array, shape: tuple[int, int]) -> Array:
  """[R, N] values into the [B, T] completion layout: out[b, t] = the value whose dest = b·T + t, 0 where none
  points (padding); dest = B·T is discarded."""
  b, t = shape
  flat = jnp.zeros((b * t + 1,), values.dtype).at[dest.reshape(-1)].add(values.reshape(-1))
  return constrain_rows(flat[:-1].reshape(b, t))


def packed_logprobs(params: dict, cfg: ModelConfig, packed, shape: tuple[int, int], *,
                    vocab_chunk: int = 8192) -> tuple[Array, Array]:
  """Log-probs and entropies [B, T] of the completion tokens of a batch in the packed layout
  (rl_jax.packing.pack_groups), equal to `rl_jax.logprobs.token_logprobs` on the plain [B, P + T] layout at
  every real completion token (0 at padding).

  h = decoder(tokens, positions, `banded_attention`) [R, S, D]; target x_n of a row is scored by the hidden
  state at its source position (its predecessor, or its prompt's last token): log p(x_n) = log softmax(h_src · W)[x_n]
  (the output projection runs on completion tokens only), then scattered to [B, T] by dest. Each prompt is
  computed once for its G completions; the gradient through that one copy is the sum of the G copies'
  gradients of the plain layout (Prefix Grouper, arXiv 2506.05433). `shape` = (B, T); `packed`: a
  rl_jax.packing.Packed of arrays.
  """
  attention = lambda q, k, v: banded_attention(q, k, v, packed.segment, packed.member, packed.window, cfg)
  h = hidden_states(params, packed.tokens, cfg, positions=packed.positions, attention=attention)   # [R, S, D]
  pred = jnp.take_along_axis(h, packed.source[..., None], axis=1)                                   # [R, N, D]
  r, n, d = pred.shape
  w = lm_head_weight(cast_params(params, cfg), cfg)
  logp, ent = logprobs_from_hidden(constrain_rows(pred.reshape(r * n, d)), w, constrain_rows(packed.targets.reshape(-1)),
                                   vocab_chunk=vocab_chunk)
  logp, ent = scatter_rows(logp.reshape(r, n), packed.dest, shape), scatter_rows(ent.reshape(r, n), packed.dest, shape)
  return logp, jax.lax.stop_gradient(ent)
