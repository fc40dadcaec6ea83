"""Prefix-tree and segment credit assignment: TEMPO, TreePO, SPO-chain."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards, check_tokens, register
from rl_jax.advantages.token import masked_whiten

Array = jax.Array


def valid_prefix(mask: Array) -> Array:
  """1 up to a row's first masked position (TEMPO's code stops at the first mask == 0)."""
  return jnp.cumprod((mask > 0).astype(jnp.int32), axis=-1).astype(jnp.float32)


def shared_prefix(tokens: Array, mask: Array) -> Array:
  """E[p, i, k, j] = 1 if responses i and k agree on every valid token up to and including j  [P, G, G, T]."""
  valid = mask > 0
  same = (tokens[:, :, None, :] == tokens[:, None, :, :]) & valid[:, :, None, :] & valid[:, None, :, :]
  return jnp.cumprod(same.astype(jnp.int32), axis=-1).astype(jnp.float32)


def prefix_values(tokens: Array, mask: Array, rewards: Array) -> tuple[Array, Array]:
  """P2T values (V(s_j), V(s_{j+1})) [P, G, T]: mean reward of the group members sharing each prefix.

  V(root) = group mean. Masked positions get 0. Vectorised with prefix-equality matrices [P, G, G, T].
  """
  e = shared_prefix(tokens, mask)                                                     # [P, G, G, T]
  num = jnp.einsum("pikj,pk->pij", e, rewards)
  den = jnp.sum(e, axis=2)
  v_next = jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)
  root = jnp.broadcast_to(rewards.mean(axis=1)[:, None, None], v_next[..., :1].shape)
  v_cur = jnp.concatenate([root, v_next[..., :-1]], axis=-1)
  m = mask.astype(jnp.float32)
  return v_cur * m, v_next * m


@register
def tempo(tokens, mask, rewards, *, eps: float = 1e-6, norm_adv_by_std: bool = True,
          use_kernel: bool | str = False) -> Array:
  """TEMPO: GRPO advantage plus a branch-gated TD term from the responses' prefix tree.

    A[i, j] = (R_i − μ_g + V(s_{j+1}) − V(s_j)) / (σ_g + eps),  V(s) = mean{R_k : y_k has prefix s}.

  "Exploiting Tree Structure for Credit Assignment in RL Training of LLMs", arXiv 2509.18314; defaults
  and the per-token procedure follow the official code (σ unbiased, eps = 1e-6). The TD term is zero
  unless some sibling diverges at token j. Differences from the code, both documented choices: equality
  is mask-aware (a finished response never matches through its padding), and a group of one sample
  returns 0 (the code's std of one value is NaN). Tokens after a row's first masked position get 0
  (the code stops there).
  Shapes: tokens int [P, G, T], mask [P, G, T], rewards [P, G] → [P, G, T].
  `use_kernel=True` computes the prefix values with the Pallas kernel (rl_jax.kernels.tree_prefix:
  a [G, G] carry instead of the [P, G, G, T] tensor; same values); a string picks its impl.
  """
  r = check_rewards(rewards, method="tempo")
  tokens, m = check_tokens(tokens, mask, r.shape, method="tempo")
  if r.shape[1] == 1:
    return jnp.zeros(tokens.shape, jnp.float32)
  m = valid_prefix(m)
  if use_kernel:
    from rl_jax.kernels.tree_prefix.ops import tree_prefix_values
    v_cur, v_next = tree_prefix_values(tokens, m, r, impl="auto" if use_kernel is True else str(use_kernel))
  else:
    v_cur, v_next = prefix_values(tokens, m, r)
  adv = (r - r.mean(axis=1, keepdims=True))[..., None] + v_next - v_cur
  if norm_adv_by_std:
    adv = adv / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)[..., None]
  return jax.lax.stop_gradient(adv * m)


def _treepo_terms(r: Array, paths: Array):
  """Per-depth centred rewards c [P, G, D] and group sizes [P, G, D]; depth 0 is the prompt group."""
  p, g, depth = paths.shape
  cs, sizes = [], []
  for d in range(depth):
    if d == 0:
      same = jnp.ones((p, g, g), bool)
    else:
      same = jnp.all(paths[:, :, None, :d] == paths[:, None, :, :d], axis=-1)
    size = jnp.sum(same, axis=2).astype(jnp.float32)                                   # [P, G]
    mean = jnp.einsum("pik,pk->pi", same.astype(jnp.float32), r) / size
    mean = jnp.where((d == 0) & (size == 1), 0.0, mean)   # a single-trajectory prompt keeps c = R
    cs.append(r - mean)
    sizes.append(size)
  return jnp.stack(cs, -1), jnp.stack(sizes, -1)


@register
def treepo(rewards, paths, mask, *, weighting: str = "average", remove_no_std_subgroup: bool = False,
           whiten: bool = True) -> Array:
  """TreePO: average of the centred rewards over every subtree a trajectory belongs to, whitened.

    c_{i,d} = R_i − mean{R_k : k in group_d(i)},  kept for d = 0 and for subtrees with > 1 trajectory;
    "average": A_i = mean_kept c_{i,d};  "group_size": A_i = Σ c_{i,d}|g_d| / Σ |g_d|;
    then A[i, t] = whiten(A broadcast to tokens) over the whole batch (token-weighted).

  "TreePO: Bridging the Gap of Policy Optimization and Efficacy and Inference Efficiency with
  Heuristic Tree-based Modeling", arXiv 2508.17445; "average" is the released run's setting.
  `paths` int [P, G, D]: node id of each trajectory's tree node at depth 1..D (−1 past its leaf); two
  trajectories share the depth-d subtree when their first d ids agree. Depth groups d = 0..D_max−1,
  where D_max is the longest path in the batch (the code's count of '#' in uids).
  """
  if weighting not in ("average", "group_size"):
    raise ValueError(f"Unknown weighting {weighting!r}; expected 'average' or 'group_size'.")
  r = check_rewards(rewards, method="treepo")
  paths = jnp.asarray(paths)
  if paths.ndim != 3 or paths.shape[:2] != r.shape:
    raise ValueError(f"treepo: paths must be [P, G, D] with (P, G) = {r.shape}, got {paths.shape}.")
  _, m = check_tokens(jnp.zeros(jnp.shape(mask), jnp.int32), mask, r.shape, method="treepo")
  c, size = _treepo_terms(r, paths)
  d_max = jnp.max(jnp.sum(paths >= 0, axis=-1))
  depth = jnp.arange(paths.shape[-1])
  keep = (depth[None, None, :] < d_max) & ((depth[None, None, :] == 0) | (size > 1))
  if remove_no_std_subgroup:
    same_var = jnp.stack([jnp.zeros_like(r)] + [_subgroup_spread(r, paths, d) for d in range(1, paths.shape[-1])], -1)
    keep = keep & ((depth[None, None, :] == 0) | (same_var > 0))
  keep = keep.astype(jnp.float32)
  if weighting == "average":
    seq = jnp.sum(c * keep, -1) / jnp.maximum(jnp.sum(keep, -1), 1.0)
  else:
    seq = jnp.sum(c * size * keep, -1) / jnp.maximum(jnp.sum(size * keep, -1), 1.0)
  adv = seq[..., None] * m
  return jax.lax.stop_gradient(masked_whiten(adv, m) if whiten else adv)


def _subgroup_spread(r, paths, d):
  same = jnp.all(paths[:, :, None, :d] == paths[:, None, :, :d], axis=-1).astype(jnp.float32)
  hi = jnp.max(jnp.where(same > 0, r[:, None, :], -jnp.inf), -1)
  lo = jnp.min(jnp.where(same > 0, r[:, None, :], jnp.inf), -1)
  return hi - lo


def spo_chain_cut_points(token_probs, mask, *, interval: int = 5, threshold: float = 0.9) -> tuple[Array, Array]:
  """SPO-chain cut points c = (L − 1)[::interval], L = {t valid : p_t < threshold}; c is the state after token c.

  Returns (cut [P, G, T]: a cut at the state after token t; prompt_cut [P, G]: the cut c = −1, the
  prompt alone, present when the first token is the first chosen low-probability token). These are
  the states whose Monte-Carlo values `spo_chain` reads. "Segment Policy Optimization", arXiv 2505.23564.
  """
  if interval < 1:
    raise ValueError(f"interval must be >= 1, got {interval}.")
  p = jnp.asarray(token_probs, jnp.float32)
  m = jnp.asarray(mask)
  low = (p < threshold) & (m > 0)
  rank = jnp.cumsum(low.astype(jnp.int32), -1) - 1
  chosen = low & (rank % interval == 0)
  cut = jnp.concatenate([chosen[..., 1:], jnp.zeros_like(chosen[..., :1])], -1)  # the state before a chosen token
  return cut, chosen[..., 0]


@register
def spo_chain(token_probs, mask, values, final_scores, *, interval: int = 5, threshold: float = 0.9,
              prob_mask: bool = True, prompt_values=None) -> tuple[Array, Array]:
  """SPO-chain segment advantages from Monte-Carlo values at low-probability cut points.

  Value points: the cut points of `spo_chain_cut_points` and the last valid token (value = final
  score, which wins on a collision). A segment (c_{k−1}, c_k] gets V(c_k) − V(c_{k−1}); the segment up to
  the first value point gets 0 unless that point has a predecessor. The prompt state c = −1 is a value
  point when the first token is a chosen low-probability token and `prompt_values` [P, G] (its MC value)
  is given; without `prompt_values` it is skipped, so the first segment of such a response gets 0 where
  the official code would give V(c_1) − V(prompt). With `prob_mask`, tokens with p_t > threshold get 0
  and are dropped from the returned loss mask (whitening over that mask is left to the caller).
  "Segment Policy Optimization", arXiv 2505.23564 (official code defaults: interval 5, threshold 0.9).
  Args: token_probs [P, G, T] actor probabilities of the taken tokens; values [P, G, T] MC value of the
  state after token t (read at cut points only); final_scores [P, G].
  Returns: (advantages [P, G, T], loss mask [P, G, T]).
  """
  s = check_rewards(final_scores, method="spo_chain")
  _, m = check_tokens(jnp.zeros(jnp.shape(mask), jnp.int32), mask, s.shape, method="spo_chain")
  p = jnp.asarray(token_probs, jnp.float32)
  t = p.shape[-1]
  cut, prompt_cut = spo_chain_cut_points(p, m, interval=interval, threshold=threshold)
  last = (jnp.arange(t)[None, None, :] == (jnp.sum(m, -1, keepdims=True) - 1)) & (m > 0)
  vp = (cut | last) & (m > 0)
  val = jnp.where(last, s[..., None], jnp.asarray(values, jnp.float32))
  # Position 0 of the extended axis is the prompt state, position t + 1 the state after token t.
  if prompt_values is None:
    vp0, val0 = jnp.zeros_like(prompt_cut), jnp.zeros_like(s)
  else:
    vp0, val0 = prompt_cut & (jnp.sum(m, -1) > 0), jnp.broadcast_to(jnp.asarray(prompt_values, jnp.float32), s.shape)
  vp = jnp.concatenate([vp0[..., None], vp], -1)
  val = jnp.concatenate([val0[..., None], val], -1)
  n = t + 1
  idx = jnp.broadcast_to(jnp.arange(n)[None, None, :], vp.shape)
  prev_idx = jax.lax.cummax(jnp.where(vp, idx, -1), axis=2)
  prev_idx = jnp.concatenate([jnp.full_like(prev_idx[..., :1], -1), prev_idx[..., :-1]], -1)
  prev_val = jnp.take_along_axis(val, jnp.maximum(prev_idx, 0), -1)
  delta = jnp.where(vp & (prev_idx >= 0), val - prev_val, 0.0)
  nxt = jax.lax.cummin(jnp.where(vp, idx, n), axis=2, reverse=True)
  adv = (jnp.take_along_axis(delta, jnp.minimum(nxt, n - 1), -1) * (nxt < n))[..., 1:] * m
  loss_mask = m
  if prob_mask:
    high = p > threshold
    adv = jnp.where(high, 0.0, adv)
    loss_mask = m * (~high)
  return jax.lax.stop_gradient(adv), loss_mask
