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
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from rl_jax.logprobs import logprobs_from_hidden, lowering_platform
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
  r, s = segment.shape
  idx = jnp.arange(s)
  return _allowed_at(idx, jnp.broadcast_to(idx, (r, s)), segment, member, segment, member)


def span_starts(segment: Array) -> Array:
  """[R, S] int32: the index of the first position of the span holding each position (of the last span that starts
  at or before it; 0 before the first): a span starts where the segment changes to a value > 0."""
  idx = jnp.arange(segment.shape[1], dtype=jnp.int32)
  starts = (segment > 0) & (segment != jnp.pad(segment, ((0, 0), (1, 0)))[:, :-1])
  return jax.lax.cummax(jnp.where(starts, idx[None], 0), axis=1)


class KeyBlocks(NamedTuple):
  """Which keys each block of C queries of `grouped_attention` scores, and which of its pairs are allowed: a
  function of the layout only, so it is computed once per forward and shared by every layer."""
  keys: Array      # [n, R, W] int32: key positions (+ the completion window's padding offset), W = lw + w + C
  allowed: Array   # [n, R, C, W] bool: `packed_mask` at (query, key); each allowed pair in exactly one of the sets


def key_blocks(segment: Array, member: Array, prompt_window: int, completion_window: int, chunk: int) -> KeyBlocks:
  """The key sets of `grouped_attention`'s query blocks i (queries x0 = i·C .. x0 + C − 1):
    prompt: the `prompt_window` keys from the start of the span holding x0 (`span_starts`), of which the pairs
            whose key is before x0 and in a prompt (member 0) count;
    band:   the `completion_window` + C keys x0 − w .. x0 + C − 1, of which every other allowed pair counts.
  Keys are indexed into the keys padded by w before and lw + (n·C − S) after (so both sets stay in bounds)."""
  r, s = segment.shape
  lw, w, c = prompt_window, completion_window, chunk
  n = -(-s // c)
  end = n * c - s
  q_blocks = lambda x: jnp.pad(x, ((0, 0), (0, end))).reshape(r, n, c).swapaxes(0, 1)           # [n, R, C]
  pad = lambda x: jnp.pad(x, ((0, 0), (w, end + lw)))
  seg_k, mem_k = pad(segment), pad(member)
  first = span_starts(segment)[:, ::c].T                                                         # [n, R]
  prompt = first[:, :, None] + w + jnp.arange(lw, dtype=jnp.int32)[None, None]                  # [n, R, lw]
  band = jnp.broadcast_to((jnp.arange(n, dtype=jnp.int32) * c)[:, None, None]
                          + jnp.arange(w + c, dtype=jnp.int32)[None, None], (n, r, w + c))
  keys = jnp.concatenate([prompt, band], axis=2)                                                 # [n, R, W]
  in_prompt = jnp.arange(lw + w + c) < lw

  def allowed(i, q_seg, q_mem, kj, k_seg, k_mem):
    x0, qi = i * c, i * c + jnp.arange(c)
    prompt_pair = (kj < x0) & (k_mem == 0)                                                       # [R, W]
    in_set = jnp.where(in_prompt[None], prompt_pair, ~prompt_pair)
    return _allowed_at(qi, kj, q_seg, q_mem, k_seg, k_mem) & in_set[:, None]

  ok = jax.vmap(allowed)(jnp.arange(n), q_blocks(segment), q_blocks(member), keys - w, take_rows(seg_k, keys),
                         take_rows(mem_k, keys))
  return KeyBlocks(keys, ok)


def grouped_attention(q: Array, k: Array, v: Array, segment: Array, member: Array, prompt_window: int,
                      completion_window: int, cfg: ModelConfig, chunk: int = 0,
                      blocks: Optional[KeyBlocks] = None, gathered: Optional[bool] = None) -> Array:
  """softmax(q kᵀ/√hd + `packed_mask`) v on packed rows, one block of C queries (from x0 = i·C) at a time
  against two key sets under one softmax (`key_blocks`):
    prompt: the `prompt_window` keys from the start of the span holding x0 (`span_starts`): the pairs whose key
            is before x0 and in a prompt (member 0);
    band:   the `completion_window` + C keys before and inside the block: every other allowed pair.
  Exact when no prompt is longer than `prompt_window` and no completion than `completion_window`: an allowed key
  before x0 lies in its query's span, which then holds x0, so it is that span's prompt (in the prompt set) or
  the query's own completion (within the band); a span starting at or after x0 lies in the block. Scores per
  block C·(prompt_window + completion_window + C) instead of C·S (dense) or C·(longest span + C) (a band over
  whole spans): a completion token attends to its prompt and its own completion only (Prefix Grouper's mask,
  arXiv 2506.05433).

  `gathered` (default: on CPU, `rl_jax.logprobs.lowering_platform`): every block's keys and values are gathered
  before the loop, head-major ([n, R, K, W, hd]), so the loop body is two batched matmuls and a softmax, and the
  backward scatters their gradients back once; slicing them inside the loop instead adds a gradient of the whole
  key array at every block in the backward (quadratic in S: at the GSM8K CPU step's windows one SmolLM2 layer's
  attention, forward + backward, took 0.78 CPU s on 4 rows of 1792 and 1.06 on one row of 7168 sliced with blocks
  of 32, 0.58 / 0.65 gathered with blocks of 64: `grouped_attention_bench`, README). The gathered copies
  are W / C times the keys and values: on an accelerator, where HBM is what runs out (the 1.5B pod preset's
  log-prob forward needed 36.6 GiB per v5p chip gathered against 18.2 sliced, its train step 22.8 against 15.3),
  the loop slices.

  q [R, S, H, hd], k/v [R, S, K, hd] → [R, S, H·hd]; C = `chunk` or `grouped_chunk(cfg, gathered)`; `blocks`: the
  layout's `key_blocks` for this C (computed here if None; gathered only). Products in float32 for
  cfg.attention == "full" (as `_attention`), else in the input dtype with float32 accumulation; each block is
  recomputed in the backward pass.
  """
  r, s, h, hd = q.shape
  kh, lw, w = k.shape[2], prompt_window, completion_window
  gathered = lowering_platform() == "cpu" if gathered is None else gathered
  c = min(chunk or grouped_chunk(cfg, gathered), s)
  if not gathered:
    return _sliced_attention(q, k, v, segment, member, lw, w, cfg, c)
  n = -(-s // c)
  end = n * c - s
  if blocks is None:
    blocks = key_blocks(segment, member, lw, w, c)
  if blocks.allowed.shape != (n, r, c, lw + w + c):
    raise ValueError(f"key blocks {blocks.allowed.shape} do not match {n} blocks of {c} queries on {r} rows with "
                     f"{lw + w + c} keys each.")
  dt = jnp.float32 if cfg.attention == "full" else q.dtype
  qb = jnp.pad(q, ((0, 0), (0, end), (0, 0), (0, 0))).astype(dt).reshape(r, n, c, kh, h // kh, hd)
  qb = qb.transpose(1, 0, 3, 4, 2, 5)                                                # [n, R, K, G, C, hd]
  gather = lambda x: take_rows(jnp.pad(x.astype(dt), ((0, 0), (w, end + lw), (0, 0), (0, 0))), blocks.keys)
  kb, vb = (gather(x).transpose(0, 1, 3, 2, 4) for x in (k, v))                       # [n, R, K, W, hd]

  @jax.checkpoint
  def block(_, xs):
    qc, kc, vc, ok = xs
    scores = jnp.einsum("bkgcd,bktd->bkgct", qc, kc, preferred_element_type=jnp.float32) / math.sqrt(hd)
    probs = jax.nn.softmax(jnp.where(ok[:, None, None], scores, -1e30), axis=-1)
    out = jnp.einsum("bkgct,bktd->bkgcd", probs.astype(dt), vc, preferred_element_type=jnp.float32)
    return None, out.astype(q.dtype)

  _, out = jax.lax.scan(block, None, (qb, kb, vb, blocks.allowed))                  # [n, R, K, G, C, hd]
  return out.transpose(1, 0, 4, 2, 3, 5).reshape(r, n * c, h * hd)[:, :s]


def _sliced_attention(q: Array, k: Array, v: Array, segment: Array, member: Array, prompt_window: int,
                      completion_window: int, cfg: ModelConfig, c: int) -> Array:
  """`grouped_attention` slicing each block's keys out of the padded keys inside the loop (no copies of K/V;
  the backward adds a key-sized gradient per block)."""
  r, s, h, hd = q.shape
  kh, lw, w = k.shape[2], prompt_window, completion_window
  n = -(-s // c)
  end = n * c - s
  dt = jnp.float32 if cfg.attention == "full" else q.dtype
  qb = jnp.pad(q, ((0, 0), (0, end), (0, 0), (0, 0))).astype(dt).reshape(r, n, c, kh, h // kh, hd).swapaxes(0, 1)
  blocks = lambda x: jnp.pad(x, ((0, 0), (0, end))).reshape(r, n, c).swapaxes(0, 1)
  pad = lambda x: jnp.pad(x, ((0, 0), (w, end + lw)) + ((0, 0),) * (x.ndim - 2))   # key j at j + w
  kp, vp, seg_k, mem_k = pad(k.astype(dt)), pad(v.astype(dt)), pad(segment), pad(member)
  first = span_starts(segment)[:, ::c].T                                               # [n, R]

  @jax.checkpoint
  def block(_, xs):
    i, qc, q_seg, q_mem, ps = xs
    x0, qi = i * c, i * c + jnp.arange(c)
    kj_p = ps[:, None] + jnp.arange(lw)[None]                                          # [R, lw] key indices
    pre = lambda x: jnp.take_along_axis(x, (kj_p + w).reshape((r, lw) + (1,) * (x.ndim - 2)), axis=1)
    band = lambda x: jax.lax.dynamic_slice_in_dim(x, x0, w + c, axis=1)               # keys x0 − w ..
    kj_b = x0 - w + jnp.arange(w + c)
    in_prompt_set = lambda kj, mem: (kj < x0) & (mem == 0)                             # [R, W]
    ok_p = _allowed_at(qi, kj_p, q_seg, q_mem, pre(seg_k), pre(mem_k)) & in_prompt_set(kj_p, pre(mem_k))[:, None]
    ok_b = _allowed_at(qi, jnp.broadcast_to(kj_b, (r, w + c)), q_seg, q_mem, band(seg_k), band(mem_k))
    ok_b &= ~in_prompt_set(kj_b[None], band(mem_k))[:, None]
    kc, vc = (jnp.concatenate([pre(x), band(x)], axis=1) for x in (kp, vp))
    scores = jnp.einsum("bckgd,btkd->bkgct", qc, kc, preferred_element_type=jnp.float32) / math.sqrt(hd)
    allowed = jnp.concatenate([ok_p, ok_b], axis=2)
    probs = jax.nn.softmax(jnp.where(allowed[:, None, None], scores, -1e30), axis=-1)
    out = jnp.einsum("bkgct,btkd->bckgd", probs.astype(dt), vc, preferred_element_type=jnp.float32)
    return None, out.astype(q.dtype)

  _, out = jax.lax.scan(block, None, (jnp.arange(n), qb, blocks(segment), blocks(member), first))
  return out.swapaxes(0, 1).reshape(r, n * c, h * hd)[:, :s]


def take_rows(x: Array, idx: Array) -> Array:
  """x [R, L, ...] at positions idx [n, R, W] of each row → [n, R, W, ...] (a gather batched over the rows, so a
  mesh that splits the rows keeps it on each device)."""
  return jax.vmap(lambda row, i: row[i], in_axes=(0, 1), out_axes=1)(x, idx)


def grouped_chunk(cfg: ModelConfig, gathered: bool) -> int:
  """`grouped_attention`'s default query block: min(cfg.attn_chunk, GROUPED_CHUNK[gathered])."""
  return min(cfg.attn_chunk, GROUPED_CHUNK[gathered])


# Gathered (CPU), per SmolLM2 layer (9 heads, fwd + bwd, one CPU core, `grouped_attention_bench`): at the GSM8K
# CPU step's windows (prompt window 181, completions 192) 0.64 CPU s with blocks of 32 queries and 0.58 with 64
# on 4 rows of 1792, 0.72 / 0.65 on one row of 7168; at the RL-step benchmark's 2 × 4 × 64 step (one row of 640,
# measured apart) 32 and 64 tie (0.018 / 0.019 s). Sliced (accelerators): 32, as tuned before on CPU; not tuned
# on an accelerator.
GROUPED_CHUNK = {True: 64, False: 32}


def _allowed_at(qi, kj, q_seg, q_mem, k_seg, k_mem):
  """`packed_mask` [R, C, W] for query indices qi [C] and per-row key indices kj [R, W] with their
  segments/members [R, C], [R, W]."""
  causal = kj[:, None, :] <= qi[None, :, None]
  same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] > 0)
  prefix_or_own = (k_mem[:, None, :] == 0) | (q_mem[:, :, None] == k_mem[:, None, :])
  return (causal & same & prefix_or_own) | (kj[:, None, :] == qi[None, :, None])


def scatter_rows(values: Array, dest: Array, shape: tuple[int, int]) -> Array:
  """[R, N] values into the [B, T] completion layout: out[b, t] = the value whose dest = b·T + t, 0 where none
  points (padding); dest = B·T is discarded."""
  b, t = shape
  flat = jnp.zeros((b * t + 1,), values.dtype).at[dest.reshape(-1)].add(values.reshape(-1))
  return constrain_rows(flat[:-1].reshape(b, t))


def packed_logprobs(params: dict, cfg: ModelConfig, packed, shape: tuple[int, int], *,
                    vocab_chunk: int = 8192, keep_logits: Optional[bool] = None) -> tuple[Array, Array]:
  """Log-probs and entropies [B, T] of the completion tokens of a batch in the packed layout
  (rl_jax.packing.pack_groups), equal to `rl_jax.logprobs.token_logprobs` on the plain [B, P + T] layout at
  every real completion token (0 at padding).

  h = decoder(tokens, positions, `grouped_attention`) [R, S, D]; target x_n of a row is scored by the hidden
  state at its source position (its predecessor, or its prompt's last token): log p(x_n) = log softmax(h_src · W)[x_n]
  (the output projection runs on completion tokens only), then scattered to [B, T] by dest. Each prompt is
  computed once for its G completions; the gradient through that one copy is the sum of the G copies'
  gradients of the plain layout (Prefix Grouper, arXiv 2506.05433). `shape` = (B, T); `packed`: a
  rl_jax.packing.Packed of arrays; `vocab_chunk`, `keep_logits`: see `rl_jax.logprobs.logprobs_from_hidden`.
  """
  gathered = lowering_platform() == "cpu"
  c = min(grouped_chunk(cfg, gathered), packed.tokens.shape[1])
  blocks = key_blocks(packed.segment, packed.member, packed.prompt_window, packed.completion_window, c) if gathered \
      else None                                                                        # shared by every layer
  attention = lambda q, k, v: grouped_attention(q, k, v, packed.segment, packed.member, packed.prompt_window,
                                                packed.completion_window, cfg, chunk=c, blocks=blocks,
                                                gathered=gathered)
  h = hidden_states(params, packed.tokens, cfg, positions=packed.positions, attention=attention)   # [R, S, D]
  pred = jnp.take_along_axis(h, packed.source[..., None], axis=1)                                   # [R, N, D]
  r, n, d = pred.shape
  w = lm_head_weight(cast_params(params, cfg), cfg)
  logp, ent = logprobs_from_hidden(constrain_rows(pred.reshape(r * n, d)), w, constrain_rows(packed.targets.reshape(-1)),
                                   vocab_chunk=vocab_chunk, keep_logits=keep_logits)
  logp, ent = scatter_rows(logp.reshape(r, n), packed.dest, shape), scatter_rows(ent.reshape(r, n), packed.dest, shape)
  return logp, jax.lax.stop_gradient(ent)
