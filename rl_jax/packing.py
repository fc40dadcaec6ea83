"""Packed groups: each distinct prompt once, followed by its completions, with no padding (host-side layout).

A batch of rollouts tokens [B, P + T] (left-padded prompts, right-padded completions; rows that share a
prompt form a group, in any row order) becomes R rows of S positions. A group of G rows occupies one
contiguous span of a row,

  [ prompt (l tokens) | completion 1 (n_1 tokens) | … | completion G (n_G tokens) ],

at RoPE positions 0..l−1 for the prompt and l..l+n_j−1 for completion j: the positions the plain layout
gives (`rl_jax.models.llama.default_positions`). `rl_jax.prefix_grouper.packed_logprobs` runs the forward on
this layout with the shared-prefix attention of Prefix Grouper (arXiv 2506.05433): a prompt token sees the
earlier tokens of its prompt, a completion token its prompt and the earlier tokens of its own completion.
Positions computed: R·S ≈ Σ_groups (l + Σ_j n_j), the distinct real tokens, instead of B·(P + T); the
output projection runs on the completion tokens only. No prompt is longer than `prompt_window` and no
completion than `completion_window`, so a query only needs the prompt keys of its span and the
`completion_window` keys before it (grouped attention: rl_jax.prefix_grouper.grouped_attention).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
  tokens: np.ndarray      # [R, S] int32 (0 at padding)
  positions: np.ndarray   # [R, S] int32 RoPE positions
  segment: np.ndarray     # [R, S] int32: 1 + the span's index within its row; 0 = padding
  member: np.ndarray      # [R, S] int32: 0 for a prompt token, j for a token of the group's j-th completion
  targets: np.ndarray     # [R, N] int32: the row's completion tokens (0 past them)
  source: np.ndarray      # [R, N] int32: the position in the row whose hidden state predicts each target (the
                          #   previous completion token, or the prompt's last token); 0 past them
  dest: np.ndarray        # [R, N] int32: b·T + t of each target in the [B, T] layout; B·T past them (discarded)
  prompt_window: int = dataclasses.field(default=1, metadata=dict(static=True))       # ≥ the longest prompt (static)
  completion_window: int = dataclasses.field(default=1, metadata=dict(static=True))   # ≥ the longest completion


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


def split_groups(groups: list, max_span: int) -> list:
  """Groups whose span (prompt + all completions) exceeds `max_span` split into consecutive sub-groups, each
  repeating the prompt, with as many completions as fit (a lone prompt + completion always forms one)."""
  out = []
  for prompt, members in groups:
    part, size = [], len(prompt)
    for b, comp in members:
      if part and size + len(comp) > max_span:
        out.append((prompt, part))
        part, size = [], len(prompt)
      part.append((b, comp))
      size += len(comp)
    out.append((prompt, part))
  return out


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



def balanced_fit(sizes: list, capacity: int, rows: int) -> Optional[list]:
  """`rows` bins filled largest span first, each into the emptiest bin (longest-processing-time order), or None
  if a bin overflows `capacity`: it pairs long spans with short ones where first-fit decreasing fills its first
  bins with the longest."""
  bins, load = [[] for _ in range(rows)], [0] * rows
  for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
    j = min(range(rows), key=lambda j: load[j])
    bins[j].append(i)
    load[j] += sizes[i]
  return None if max(load) > capacity else bins


def fit(sizes: list, capacity: int, rows: int) -> list:
  """First-fit decreasing bins of `capacity`; when they are more than `rows` (≥ 1), `balanced_fit`'s `rows` bins
  instead if they hold every span."""
  bins = first_fit(sizes, capacity)
  if len(bins) > rows:
    other = balanced_fit(sizes, capacity, rows)
    bins = bins if other is None else [b for b in other if b]
  return bins


def round_up(n: int, fine: int = 16) -> int:
  """n rounded up to a multiple of 2^(⌊log₂ n⌋ − log₂ fine) (at least 8): at most 1/fine of it is padding, and the
  lengths a run meets fall on a few values per octave (each compiles once)."""
  step = max(8, 2 ** (max(n, 1).bit_length() - 1) // fine)
  return -(-n // step) * step


# How finely each static size of the packed rows is rounded (`round_up`'s `fine`). Every new (R, S, N) compiles
# the train step and the log-prob forward again (the attention windows are the run's fixed P and T), so N, which
# does not change the positions the decoder computes, is rounded coarsely (the targets the output projection runs
# on, ≤ 1/4 padding). Simulated over 100 steps of 8 GSM8K-like groups of 4 (2 mini-batches; prompts 80–160
# tokens, completions log-normal around 170 capped at 192): 12 log-prob and 15 train-step shapes at 1.044× the
# distinct tokens, against 20 and 39 at 1.022× when both used 1/16.
ROW_FINE, TARGET_FINE = 8, 4


def span_limit(plain_width: int) -> int:
  """The longest span the loop packs (`pack_groups`' max_span): 4 plain rows of `plain_width` = P + T tokens;
  a longer group is split, so a row need not be longer than 4 plain rows."""
  return 4 * plain_width


def target_width(n: int) -> int:
  """N: a row's most completion tokens `n`, rounded (TARGET_FINE)."""
  return round_up(n, TARGET_FINE)


def choose_layout(sizes: list, *, rows_multiple: int = 1, candidates: int = 24,
                  known: Iterable = ()) -> tuple[int, int, list]:
  """(R, S, bins) packing spans of `sizes` into R rows of S positions with the fewest positions R·S: S from
  `candidates` lengths between the longest span and the total (each `round_up` at ROW_FINE), R the number of
  first-fit-decreasing bins rounded up to `rows_multiple`; ties go to the shorter row.

  `known`: (R, S) layouts already compiled. The smallest of them that holds the spans (R a multiple of
  `rows_multiple`) is taken instead when it computes at most LAYOUT_SLACK more positions than the best layout:
  equal-sized layouts (e.g. 4 × 1792 and 2 × 3584) no longer compile again, each new one a train step.
  """
  if rows_multiple < 1 or not sizes:
    raise ValueError(f"rows_multiple ({rows_multiple}) must be positive and there must be spans ({len(sizes)}).")
  longest, total = max(sizes), -(-sum(sizes) // rows_multiple)
  lengths = sorted({round_up(int(x), ROW_FINE) for x in np.linspace(longest, max(longest, total), candidates)})
  best = None
  fewest = lambda s: -(-sum(sizes) // (s * rows_multiple)) * rows_multiple     # R ≥ Σ sizes / S, a multiple
  for s in lengths:
    bins = fit(sizes, s, fewest(s))
    r = -(-len(bins) // rows_multiple) * rows_multiple
    if best is None or r * s < best[0] * best[1]:
      best = (r, s, bins)
  for r, s in sorted(set(known), key=lambda rs: (rs[0] * rs[1], rs[1])):
    if r * s > best[0] * best[1] * (1 + LAYOUT_SLACK):
      break
    if r % rows_multiple == 0 and s >= longest:
      bins = fit(sizes, s, r)
      if len(bins) <= r:
        return r, s, bins
  return best


# A compiled layout is reused for up to 1/32 more positions than the best new one: a new (R, S) compiles the
# log-prob forward and the train step again (~5 s at the GSM8K CPU default step, 11-14 s with unrolled layers),
# against ~2.4 s for 1/32 of its ~76 s train step.
LAYOUT_SLACK = 1 / 32


def pack_groups(tokens: np.ndarray, attn_mask: np.ndarray, prompt_len: int, *, rows_multiple: int = 1,
                max_span: Optional[int] = None, known: Iterable = ()) -> Packed:
  """The packed layout of a batch (module docstring): each group's prompt once, then its completions.

  Args:
    tokens, attn_mask: [B, P + T] with P = prompt_len (left-padded prompts, right-padded completions).
    rows_multiple: R is a multiple of it (micro-batches, devices on the batch axes).
    max_span: longer groups are split (`split_groups`; their prompt is then computed once per part).
    known: (R, S) layouts already compiled, reused when barely larger (`choose_layout`).
  The attention windows are the plain widths P and T (at most S): fixed for a run's batches, so they add no
  compiled shapes, and a query scores no more keys than in the plain layout; N the most completion tokens of a
  row (`target_width`).
  """
  groups = groups_of(tokens, attn_mask, prompt_len)
  if max_span is not None:
    groups = split_groups(groups, max_span)
  b, t = tokens.shape[0], tokens.shape[1] - prompt_len
  sizes = [len(p) + sum(len(c) for _, c in members) for p, members in groups]
  r, s, bins = choose_layout(sizes, rows_multiple=rows_multiple, known=known)
  n = target_width(max([sum(sizes[g] - len(groups[g][0]) for g in row) for row in bins] + [1]))
  out = Packed(*(np.zeros((r, s), np.int32) for _ in range(4)), np.zeros((r, n), np.int32),
               np.zeros((r, n), np.int32), np.full((r, n), b * t, np.int32), prompt_window=min(prompt_len, s),
               completion_window=min(t, s))
  for row, groups_of_row in enumerate(bins):
    at, k = 0, 0
    for seg, g in enumerate(groups_of_row, start=1):
      at, k = _place_group(out, row, at, k, seg, *groups[g], t)
  return out


def _place_group(out: Packed, row: int, at: int, k: int, seg: int, prompt: np.ndarray, members: list,
                 t: int) -> tuple[int, int]:
  """Writes one group's span at out[row, at:] and its targets at out[row, k:] (in place); returns the next free
  position and target slot."""
  lp = len(prompt)
  last = at + lp - 1                                   # the prompt's last token predicts every first token
  out.tokens[row, at:at + lp], out.positions[row, at:at + lp], out.segment[row, at:at + lp] = prompt, np.arange(lp), seg
  at += lp
  for j, (b, comp) in enumerate(members, start=1):
    n = len(comp)
    span, slots = slice(at, at + n), slice(k, k + n)
    out.tokens[row, span], out.positions[row, span] = comp, lp + np.arange(n)
    out.segment[row, span], out.member[row, span] = seg, j
    out.targets[row, slots] = comp
    out.source[row, slots] = np.concatenate([[last], np.arange(at, at + n - 1)])[:n]
    out.dest[row, slots] = b * t + np.arange(n)
    at, k = at + n, k + n
  return at, k


def layout_stats(packed: Packed, tokens: np.ndarray, attn_mask: np.ndarray) -> dict:
  """Positions the decoder computes, packed (R·S) and plain (B·(P + T)), against the batch's real tokens
  (Σ mask) and its distinct real tokens (each group's prompt counted once: the packed spans' total)."""
  return {"packed_positions": int(packed.tokens.size), "plain_positions": int(np.asarray(tokens).size),
          "real_tokens": int(np.asarray(attn_mask).astype(bool).sum()),
          "distinct_tokens": int((np.asarray(packed.segment) > 0).sum())}
