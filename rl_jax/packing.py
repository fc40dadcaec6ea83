"""Packed groups: each distinct prompt once, followed by its completions, with no padding (host-side layout).

A batch of rollouts tokens [B, P + T] (left-padded prompts, right-padded completions; rows that share a
prompt form a group, in any row order) becomes R rows of S positions. A group of G rows occupies one
contiguous span of a row,

  [ prompt (l tokens) | completion 1 (n_1 tokens) | … | completion G (n_G tokens) ],

at RoPE positions 0..l−1 for the prompt and l..l+n_j−1 for completion j: the positions the plain layout
gives (`rl_jax.models.llama.default_positions`). `rl_jax.prefix_grouper.packed_logprobs` runs the forward on
this layout with the shared-prefix attention of Prefix Grouper (arXiv 2506.05433): a prompt token sees the
earlier tokens of its prompt, a completion token its prompt and the earlier tokens of its own completion.
Positions computed: R·S ≈ Σ_groups (l + Σ_j n_j), the distinct real tokens, instead of B·(P + T).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from rl_jax.models.config import ModelConfig


class Packed(NamedTuple):
  tokens: np.ndarray      # [R, S] int32 (0 at padding)
  positions: np.ndarray   # [R, S] int32 RoPE positions
  segment: np.ndarray     # [R, S] int32: 1 + the span's index within its row; 0 = padding
  member: np.ndarray      # [R, S] int32: 0 for a prompt token, j for a token of the group's j-th completion
  source: np.ndarray      # [R, S] int32: for a completion token, the position in its row whose hidden state
                          #   predicts it (the previous completion token, or the prompt's last token); else 0
  dest: np.ndarray        # [R, S] int32: b·T + t of a completion token in the [B, T] layout; B·T elsewhere


def groups_of(tokens: np.ndarray, attn_mask: np.ndarray, prompt_len: int) -> list:
  """Rows grouped by their real prompt tokens: [(prompt [l], [(row, completion [n]), …]), …] in order of first
  appearance. Checks what the plain layout assumes: the prompt's last column is real (it predicts the first
  completion token) and each completion's real tokens are a prefix of its columns."""
  tokens, attn = np.asarray(tokens), np.asarray(attn_mask).astype(bool)
  if tokens.ndim != 2 or attn.shape != tokens.shape or not 0 < prompt_len < tokens.shape[1] or not len(tokens):
    raise ValueError(f"tokens {tokens.shape} and attn_mask {attn.shape} must be [B, P + T] with 0 < P={prompt_len} < P + T.")
  comp = attn[:, prompt_len:]
  n = comp.sum(axis=1)
  if not attn[:, prompt_len - 1].all():
    raise ValueError("packing needs every prompt's last column to be a real token (left-padded prompts).")
  if (comp != (np.arange(comp.shape[1])[None] < n[:, None])).any():
    raise ValueError("packing needs right-padded completions (real tokens first, then padding).")
  groups, index = [], {}
  for b in range(tokens.shape[0]):
    prompt = tokens[b, :prompt_len][attn[b, :prompt_len]]
    key = prompt.tobytes()
    if key not in index:
      index[key] = len(groups)
      groups.append((prompt, []))
    groups[index[key]][1].append((b, tokens[b, prompt_len:prompt_len + n[b]]))
  return groups


def first_fit(sizes: list, capacity: int) -> list:
  """First-fit decreasing bin packing: lists of item indices, each list's sizes summing to ≤ capacity."""
  bins, free = [], []
  for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
    j = next((j for j, f in enumerate(free) if f >= sizes[i]), None)
    if j is None:
      bins.append([])
      free.append(capacity)
      j = len(bins) - 1
    bins[j].append(i)
    free[j] -= sizes[i]
  return bins


def attention_span(cfg: ModelConfig) -> float:
  """Row length s₀ at which a row's attention costs as much as its other matmuls: per token and layer the
  projections and MLP take 2·(D·(H + 2K)·hd + H·hd·D + 3·D·F) FLOPs, attention 4·H·hd per key, so a row of
  S positions costs ∝ S·(1 + S/s₀) with s₀ = (D·(H + 2K)·hd + H·hd·D + 3·D·F) / (2·H·hd)."""
  d, h, k, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim
  return (d * (h + 2 * k) * hd + h * hd * d + 3 * d * f) / (2 * h * hd)


def default_bucket(longest: int) -> int:
  """Row lengths are multiples of 2^(⌊log₂ longest⌋ − 3) (at least 8): rounding wastes ≤ 1/8 of a row, and
  the few row lengths a run meets compile once each."""
  return 2 ** max(3, int(math.floor(math.log2(max(longest, 1)))) - 3)


def choose_layout(sizes: list, *, rows_multiple: int = 1, bucket: int = 8, span: float = math.inf,
                  candidates: int = 32) -> tuple[int, int, list]:
  """(R, S, bins) for spans of `sizes`: S a multiple of `bucket` at least the longest span, R the number of
  first-fit-decreasing bins rounded up to `rows_multiple`, minimising the estimated cost R·S·(1 + S/span)
  over the `candidates` smallest row lengths (span = `attention_span(cfg)`; ∞ counts positions only)."""
  if rows_multiple < 1 or bucket < 1:
    raise ValueError(f"rows_multiple ({rows_multiple}) and bucket ({bucket}) must be positive.")
  longest, total = max(sizes), sum(sizes)
  first = -(-longest // bucket) * bucket
  last = max(first, -(-total // bucket) * bucket)
  best = None
  for s in range(first, min(last, first + (candidates - 1) * bucket) + 1, bucket):
    bins = first_fit(sizes, s)
    r = -(-len(bins) // rows_multiple) * rows_multiple
    cost = r * s * (1 + s / span)
    if best is None or cost < best[0]:
      best = (cost, r, s, bins)
  return best[1], best[2], best[3]


def pack_groups(tokens: np.ndarray, attn_mask: np.ndarray, prompt_len: int, *, rows_multiple: int = 1,
                bucket: Optional[int] = None, span: float = math.inf) -> Packed:
  """The packed layout of a batch (module docstring): each group's prompt once, then its completions.

  Args:
    tokens, attn_mask: [B, P + T] with P = prompt_len (left-padded prompts, right-padded completions).
    rows_multiple: R is a multiple of it (micro-batches, devices on the batch axes).
    bucket: S is a multiple of it (None: `default_bucket` of the longest group); span: `choose_layout`.
  """
  groups = groups_of(tokens, attn_mask, prompt_len)
  b, t = tokens.shape[0], tokens.shape[1] - prompt_len
  sizes = [len(p) + sum(len(c) for _, c in members) for p, members in groups]
  bucket = default_bucket(max(sizes)) if bucket is None else bucket
  r, s, bins = choose_layout(sizes, rows_multiple=rows_multiple, bucket=bucket, span=span)
  out = Packed(*(np.zeros((r, s), np.int32) for _ in range(5)), dest=np.full((r, s), b * t, np.int32))
  for row, members_of_row in enumerate(bins):
    at = 0
    for seg, g in enumerate(members_of_row, start=1):
      prompt, members = groups[g]
      at = _place_group(out, row, at, seg, prompt, members, t)
  return out


def _place_group(out: Packed, row: int, at: int, seg: int, prompt: np.ndarray, members: list, t: int) -> int:
  """Writes one group's span at out[row, at:] (in place) and returns the next free position."""
  lp = len(prompt)
  last = at + lp - 1                                   # the prompt's last token predicts every first token
  out.tokens[row, at:at + lp] = prompt
  out.positions[row, at:at + lp] = np.arange(lp)
  out.segment[row, at:at + lp] = seg
  at += lp
  for j, (b, comp) in enumerate(members, start=1):
    n = len(comp)
    sl = slice(at, at + n)
    out.tokens[row, sl] = comp
    out.positions[row, sl] = lp + np.arange(n)
    out.segment[row, sl] = seg
    out.member[row, sl] = j
    out.source[row, sl] = np.concatenate([[last], np.arange(at, at + n - 1)])[:n]
    out.dest[row, sl] = b * t + np.arange(n)
    at += n
  return at


def layout_stats(packed: Packed, tokens: np.ndarray, attn_mask: np.ndarray) -> dict:
  """Positions the forward computes, packed (R·S) and plain (B·(P + T)), against the batch's real tokens
  (Σ mask) and its distinct real tokens (each group's prompt counted once: the packed spans' total)."""
  return {"packed_positions": int(packed.tokens.size), "plain_positions": int(np.asarray(tokens).size),
          "real_tokens": int(np.asarray(attn_mask).astype(bool).sum()),
          "distinct_tokens": int((packed.segment > 0).sum())}
