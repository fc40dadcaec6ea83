"""Tree values from Monte-Carlo rollouts (SPO-tree, TreeRL), process-reward credit (PURE), and the
remaining token weighting rules (D^3S, THR, XRPO, GTPO conflict tokens)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.advantages.core import register

Array = jax.Array


def tree_node_values(leaf_values, parent, is_leaf) -> Array:
  """Bottom-up node values [P, N]: a leaf keeps its value, an inner node is the mean of its children.

  `parent` int [P, N] (−1 for the root and for unused slots), `is_leaf` bool [P, N]. Iterates N times,
  enough for any depth.
  """
  leaf_values, parent, is_leaf = (jnp.asarray(x) for x in (leaf_values, parent, is_leaf))
  n = parent.shape[1]
  child = (parent[:, :, None] == jnp.arange(n)[None, None, :]).astype(jnp.float32)   # [P, child, parent]
  counts = jnp.sum(child, axis=1)                                                     # children per node
  v = jnp.where(is_leaf, leaf_values, 0.0).astype(jnp.float32)
  for _ in range(n):
    mean_children = jnp.einsum("pcn,pc->pn", child, v) / jnp.maximum(counts, 1.0)
    v = jnp.where(is_leaf, leaf_values, jnp.where(counts > 0, mean_children, 0.0))
  return v


@register
def spo_tree(node_values, parent, *, mode: str = "rloo", eps: float = 1e-8, bok: int = 4) -> tuple[Array, Array]:
  """SPO-tree edge advantages: each (parent → child) segment gets V(child) − V(parent).

  mode "rloo" (official default) or "grpo" (divided by the population std of the siblings + 1e-8).
  Also returns the official `only_adv_greater_than_zero` keep mask: edges with
  adv + (BoK(child) − BoK(parent)) ≠ 0, BoK(v) = 1 − (1 − v)^4. "Segment Policy Optimization",
  arXiv 2505.23564. Inputs [P, N] (node values from `tree_node_values`); the root's entry is 0.
  """
  if mode not in ("rloo", "grpo"):
    raise ValueError(f"Unknown mode {mode!r}; expected rloo or grpo.")
  v = jnp.asarray(node_values, jnp.float32)
  parent = jnp.asarray(parent)
  has_parent = parent >= 0
  v_parent = jnp.take_along_axis(v, jnp.maximum(parent, 0), axis=1)
  adv = jnp.where(has_parent, v - v_parent, 0.0)
  if mode == "grpo":
    sib = (parent[:, :, None] == parent[:, None, :]) & has_parent[:, :, None] & has_parent[:, None, :]
    sib = sib.astype(jnp.float32)
    cnt = jnp.sum(sib, -1)
    mu = jnp.einsum("pij,pj->pi", sib, v) / jnp.maximum(cnt, 1.0)
    var = jnp.einsum("pij,pj->pi", sib, jnp.square(v)) / jnp.maximum(cnt, 1.0) - mu ** 2
    adv = adv / (jnp.sqrt(jnp.maximum(var, 0.0)) + eps)
  best_of_k = lambda x: 1.0 - (1.0 - x) ** bok
  keep = has_parent & ((adv + best_of_k(v) - best_of_k(v_parent)) != 0)
  return jax.lax.stop_gradient(adv), keep


@register
def treerl(node_values, parent, n_leaves) -> Array:
  """TreeRL segment reward R(s_n) = (g + l)/sqrt(|L(s_n)|), g = V(s_n) − V(root), l = V(s_n) − V(parent).

  V = fraction of correct leaves under the node (`tree_node_values` of 0/1 leaves), |L| its leaf count;
  node 0 is the root.
  Paper formula ("TreeRL: LLM Reinforcement Learning with On-Policy Tree Search", arXiv 2506.11902); the
  official code's token-weighted variant differs and is not reproduced. Returns [P, N] (root 0).
  """
  v = jnp.asarray(node_values, jnp.float32)
  parent = jnp.asarray(parent)
  root = v[:, :1]
  v_parent = jnp.take_along_axis(v, jnp.maximum(parent, 0), axis=1)
  r = ((v - root) + (v - v_parent)) / jnp.sqrt(jnp.maximum(jnp.asarray(n_leaves, jnp.float32), 1.0))
  return jax.lax.stop_gradient(jnp.where(parent >= 0, r, 0.0))


@register
def pure(step_rewards, step_mask, step_positions, mask, solved, *, group_size: int, temperature: float = 0.1,
         verifiable_coef: float = 1.0, mask_separator: bool = True) -> Array:
  """PURE min-form credit assignment from process rewards (the official code's approximation).

    w_k = softmax_k(−r_k/T) over a response's steps, r̃_k = w_k r_k (so Σ_k r̃_k ≈ min_k r_k);
    baseline b_i = Σ_{j≠i} Σ_k r̃_{j,k} / Σ_{j≠i} len_j (group leave-one-out, per token), r̃_{i,k} −= b_i·ntok_{i,k};
    verifiable reward v_i = solved_i − 1, RLOO-centred, × coef, at the last token;
    token rewards = r̃ at step separators + v at EOS;  A_t = Σ_{t' ≥ t} reward_{t'} (γ = 1, no whitening);
    separator tokens get A = 0.

  "Stop Summation: Min-Form Credit Assignment Is All Process Reward Model Needs for Reasoning",
  arXiv 2504.15275. Shapes: step_rewards/step_mask/step_positions [B, K] (position = token index of the
  step's separator, steps in order), mask [B, T], solved [B]; rows grouped contiguously (B = P·G).
  """
  r = jnp.asarray(step_rewards, jnp.float32)
  sm = (jnp.asarray(step_mask) > 0)
  pos = jnp.asarray(step_positions, jnp.int32)
  m = (jnp.asarray(mask) > 0).astype(jnp.float32)
  b, k = r.shape
  t = m.shape[1]
  g = group_size
  if b % g:
    raise ValueError(f"group_size {g} must divide the batch {b}.")
  logits = jnp.where(sm, -r / temperature, -jnp.inf)
  w = jnp.where(sm, jax.nn.softmax(logits, axis=-1), 0.0)
  w = jnp.where(jnp.isfinite(w), w, 0.0)
  rt = w * r
  prev = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), pos[:, :-1]], axis=1)
  ntok = jnp.where(sm, pos - prev, 0).astype(jnp.float32)
  lengths = jnp.sum(m, -1)
  tot_r, tot_len = jnp.sum(rt, -1).reshape(-1, g), lengths.reshape(-1, g)
  others_r = tot_r.sum(1, keepdims=True) - tot_r
  others_len = tot_len.sum(1, keepdims=True) - tot_len
  base = (others_r / jnp.maximum(others_len, 1.0)).reshape(b)
  rt = jnp.where(sm, rt - base[:, None] * ntok, 0.0)
  v = (jnp.asarray(solved, jnp.float32) - 1.0).reshape(-1, g)
  v = (v - (v.sum(1, keepdims=True) - v) / max(g - 1, 1)).reshape(b) * verifiable_coef
  rewards = jnp.zeros((b, t)).at[jnp.arange(b)[:, None], jnp.clip(pos, 0, t - 1)].add(rt)
  last = jnp.clip(lengths.astype(jnp.int32) - 1, 0, t - 1)
  rewards = rewards.at[jnp.arange(b), last].add(v * (lengths > 0))
  adv = jnp.cumsum(rewards[:, ::-1], axis=-1)[:, ::-1] * m
  if mask_separator:
    is_sep = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], jnp.clip(pos, 0, t - 1)].max(sm)
    adv = jnp.where(is_sep, 0.0, adv)
  return jax.lax.stop_gradient(adv)


def d3s_schedule(step, total_steps, *, start: float = 0.25) -> Array:
  """Keep fraction that grows linearly from `start` to 1 over training (aggressive early, relaxed later)."""
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return start + (1.0 - start) * frac


@register
def d3s(advantages, entropy, mask, *, sample_keep: float = 0.5, token_keep: float = 0.5) -> Array:
  """D^3S dual-level down-sampling weights [P, G, T] (reconstruction).

  Sample level: keep the k = ⌈sample_keep·G⌉ responses with the largest |Â| in each group (for
  zero-mean group advantages this maximises the kept subset's variance). Token level: among kept
  responses keep the top token_keep fraction of valid tokens by |Â|·H. Use `d3s_schedule` to relax
  both fractions towards 1 over training. "Learning More with Less: A Dynamic Dual-Level Down-Sampling
  Framework for Efficient Policy Optimization", arXiv 2509.22115 (exact k and schedule not published
  in the abstract; both are keywords).
  """
  a = jnp.asarray(advantages, jnp.float32)
  h = jnp.asarray(entropy, jnp.float32)
  valid = jnp.asarray(mask) > 0
  g = a.shape[1]
  k = max(1, int(-(-sample_keep * g // 1)))
  order = jnp.argsort(-jnp.abs(a), axis=1, stable=True)
  rank = jnp.argsort(order, axis=1)
  keep_row = rank < k                                                       # [P, G]
  score = jnp.where(valid & keep_row[..., None], jnp.abs(a)[..., None] * h, -jnp.inf)
  n = jnp.sum(valid & keep_row[..., None])
  kt = jnp.maximum(jnp.floor(token_keep * n), 1).astype(jnp.int32)
  tau = jnp.sort(score.reshape(-1))[::-1][jnp.clip(kt - 1, 0, score.size - 1)]
  return ((score >= tau) & jnp.isfinite(score)).astype(jnp.float32)


@register
def thr(advantages, thr_scores, mask, *, p: float = 0.5) -> Array:
  """Token Hidden Reward re-weighting (reconstruction): A_t ← A_t·(1 + p·sign(THR_t)).

  p > 0 amplifies tokens whose update helps the group's correct responses (exploitation, greedy
  accuracy); p < 0 the reverse (exploration, pass@k). THR scores [B, T] are computed by the caller
  (first-order influence of the token's gradient). arXiv 2510.03669; coefficients not pinned there.
  """
  a = jnp.asarray(advantages, jnp.float32)
  s = jnp.asarray(thr_scores, jnp.float32)
  a = a.reshape(a.shape + (1,) * (s.ndim - a.ndim))
  return jax.lax.stop_gradient(a * (1.0 + p * jnp.sign(s)) * (jnp.asarray(mask) > 0))


@register
def xrpo_sharpen(advantages, rewards, mean_logp, *, lam: float = 0.1) -> Array:
  """XRPO novelty sharpening (reconstruction): correct responses that are less likely than the group's
  other correct ones get a larger advantage, A_i ← A_i + λ·max(0, mean_correct(ℓ) − ℓ_i), ℓ_i the
  length-normalised log-likelihood; incorrect responses are unchanged. arXiv 2510.06672 (the exact
  sharpening function was not available).
  """
  a = jnp.asarray(advantages, jnp.float32)
  correct = jnp.asarray(rewards) > 0
  ell = jnp.asarray(mean_logp, jnp.float32)
  n = jnp.maximum(jnp.sum(correct, 1, keepdims=True), 1)
  mean_correct = jnp.sum(jnp.where(correct, ell, 0.0), 1, keepdims=True) / n
  return jax.lax.stop_gradient(a + jnp.where(correct, lam * jnp.maximum(0.0, mean_correct - ell), 0.0))


@register
def gtpo_conflict(tokens, mask, advantages, entropy, *, ent_threshold: float = 0.7, ent_scale: float = 0.1,
                  conflict_weight: float = 2.0) -> tuple[Array, Array]:
  """GTPO conflict-token weights [P, G, T] and entropy-filtered advantages [P, G].

  The group layout of `rl_jax.objectives.gtpo_conflict_weights` (conflicts use the sign of the
  pre-shaping Â) and GTPO's entropy rule (Â ← 0 if mean entropy > threshold, else Â − scale·H̄).
  arXiv 2508.03772.
  """
  from rl_jax.objectives.gtpo import entropy_filter, gtpo_conflict_weights
  tokens, mask, a = jnp.asarray(tokens), jnp.asarray(mask, jnp.float32), jnp.asarray(advantages, jnp.float32)
  p, g, t = tokens.shape
  delta, _ = gtpo_conflict_weights(tokens.reshape(p * g, t), mask.reshape(p * g, t), a.reshape(-1), group_size=g,
                                   conflict_weight=conflict_weight)
  h = jnp.asarray(entropy, jnp.float32)
  mean_h = jnp.sum(h * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
  return delta.reshape(p, g, t), jax.lax.stop_gradient(entropy_filter(a, mean_h, threshold=ent_threshold,
                                                                         scale=ent_scale))


def spo_tree_token_advantages(rewards: np.ndarray, paths: np.ndarray, mask: np.ndarray):
  """SPO-tree on TreePO tree rollouts with one-token segments: token d of a leaf gets V(node_{d+1}) − V(node_d).

  Nodes are the distinct path prefixes of each prompt (node 0 the prompt); V is `tree_node_values`
  (a leaf its reward, an inner node the mean of its children) and the edge advantage and keep mask are
  `rl_jax.advantages.spo_tree` (official defaults: rloo mode, best-of-4 keep rule). Empty rows (path −1
  at depth 1) are not part of the tree. Returns (advantages, keep) [P, G, T].
  """
  p, g, depth = paths.shape
  n_max = 1 + g * depth
  parent = np.full((p, n_max), -1, np.int32)
  is_leaf = np.zeros((p, n_max), bool)
  leaf_val = np.zeros((p, n_max), np.float32)
  node_of = np.full((p, g, depth), -1, np.int32)                     # node id of leaf g at depth d + 1
  for i in range(p):
    ids = {(): 0}
    for j in range(g):
      if paths[i, j, 0] < 0:
        continue
      for d in range(depth):
        if paths[i, j, d] < 0:
          break
        key = tuple(paths[i, j, :d + 1])
        if key not in ids:
          ids[key] = len(ids)
          parent[i, ids[key]] = ids[key[:-1]]
        node_of[i, j, d] = ids[key]
      leaf = node_of[i, j][node_of[i, j] >= 0][-1]
      is_leaf[i, leaf], leaf_val[i, leaf] = True, rewards[i, j]
  values = tree_node_values(leaf_val, parent, is_leaf)
  edge, keep = (np.asarray(x) for x in spo_tree(values, parent))
  t = mask.shape[-1]
  adv, kp = np.zeros((p, g, t), np.float32), np.zeros((p, g, t), np.float32)
  for d in range(min(depth, t)):                                      # segment_len = 1: token d ↔ depth d + 1
    node = node_of[:, :, d]
    ok = node >= 0
    adv[:, :, d] = np.where(ok, np.take_along_axis(edge, np.maximum(node, 0), 1), 0.0)
    kp[:, :, d] = np.where(ok, np.take_along_axis(keep, np.maximum(node, 0), 1), 0.0)
  m = (mask > 0).astype(np.float32)
  return adv * m, kp * m
