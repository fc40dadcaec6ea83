"""Advantages for structured rollouts: serial groups (S-GRPO), budgeted thinking (BRPO), ranked lists
(Rank-GRPO), agent episodes with anchor states (GiGPO)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards, register

Array = jax.Array


@register
def s_grpo(correct) -> Array:
  """S-GRPO serial-group decaying rewards: r_k = 1/2^(N_right − 1) if exit k is correct, A = r − mean(r).

  `correct` [P, M] bool, members ordered by exit position (earliest first, the full thought last);
  N_right counts the correct exits at or before k. No std. "S-GRPO: Early Exit via Reinforcement
  Learning in Reasoning Models", arXiv 2505.07686 (paper only). No correct exit → all 0.
  """
  c = check_rewards(jnp.asarray(correct, jnp.float32), method="s_grpo")
  n_right = jnp.cumsum(c, axis=1)
  r = jnp.where(c > 0, 1.0 / jnp.power(2.0, n_right - 1.0), 0.0)
  return jax.lax.stop_gradient(r - r.mean(axis=1, keepdims=True))


def budget_prior(num_budgets: int, kind: str = "uniform", budgets=None) -> Array:
  """BRPO prior over budgets: "uniform", "linear" (∝ b_j) or "base" ([0, …, 0, 1])."""
  if kind == "uniform":
    p = jnp.ones((num_budgets,))
  elif kind == "linear":
    p = jnp.asarray(budgets if budgets is not None else jnp.arange(1, num_budgets + 1), jnp.float32)
  elif kind == "base":
    p = jnp.zeros((num_budgets,)).at[-1].set(1.0)
  else:
    raise ValueError(f"Unknown prior {kind!r}; expected uniform, linear or base.")
  return p / jnp.sum(p)


@register
def brpo(mean_scores, *, prior=None, baseline: str = "brpo", discount: float = 2.0) -> Array:
  """BRPO thinking-segment advantages under a budget prior (AnytimeReasoner).

    ret[g, s] = Σ_{j≥s} p_j r̄[g, j];  V2[s] = mean_g ret[g, s];
    V1[g, s] = (Σ_{j<s} d^j r̄[g, j] / Σ_{j<s} d^j) · Σ_{j≥s} p_j (0 for s = 0);
    b = (s V1 + (S − s) V2)/S ("brpo"), V1 ("v1only"), V2 ("v2only", GRPO) or 0 ("none");  A = ret − b.

  "Optimizing Anytime Reasoning via Budget Relative Policy Optimization", arXiv 2505.13438.
  `mean_scores` r̄ [P, G, S]: mean summary score after each thinking budget. Returns [P, G, S].
  Toy (S = 2, p = [.5, .5], r̄ = [[0, 1], [1, 1]]): sample 0 gets [−0.25, +0.25].
  """
  rbar = jnp.asarray(mean_scores, jnp.float32)
  if rbar.ndim != 3:
    raise ValueError(f"brpo: mean_scores must be [P, G, S], got {rbar.shape}.")
  _, g, s_count = rbar.shape
  p = budget_prior(s_count) if prior is None else jnp.asarray(prior, jnp.float32)
  b3 = lambda v: v[None, None, :]                                                      # [S] → [1, 1, S]
  tail = jnp.cumsum((rbar * b3(p))[..., ::-1], -1)[..., ::-1]                         # Σ_{j≥s} p_j r̄_j
  p_tail = jnp.cumsum(p[::-1])[::-1]
  v2 = jnp.broadcast_to(tail.mean(1, keepdims=True), tail.shape) if g > 1 else jnp.zeros_like(tail)
  w = discount ** jnp.arange(s_count, dtype=jnp.float32)
  head = jnp.cumsum(rbar * b3(w), -1) - rbar * b3(w)                                   # Σ_{j<s}
  head_w = b3(jnp.cumsum(w) - w)
  v1 = jnp.where(head_w > 0, head / jnp.where(head_w > 0, head_w, 1.0), 0.0) * b3(p_tail)
  s_idx = b3(jnp.arange(s_count, dtype=jnp.float32))
  base = {"brpo": (s_idx * v1 + (s_count - s_idx) * v2) / s_count, "v1only": v1, "v2only": v2,
          "none": jnp.zeros_like(tail)}
  if baseline not in base:
    raise ValueError(f"Unknown baseline {baseline!r}; expected one of {sorted(base)}.")
  return jax.lax.stop_gradient(tail - base[baseline])


def rank_rewards(hits, *, mode: str = "exp_inf") -> Array:
  """Rank-level rewards [P, G, K] from per-rank hits: "exp_inf" r_k = h_k; "log_decay" r_k = Σ_{j≥k} h_j/log2(j+2)."""
  h = jnp.asarray(hits, jnp.float32)
  if mode == "exp_inf":
    return h
  if mode == "log_decay":
    d = 1.0 / jnp.log2(jnp.arange(h.shape[-1], dtype=jnp.float32) + 2.0)
    d = d.reshape((1,) * (h.ndim - 1) + (-1,))
    return jnp.cumsum((h * d)[..., ::-1], -1)[..., ::-1]
  raise ValueError(f"Unknown mode {mode!r}; expected exp_inf or log_decay.")


@register
def rank_grpo(hits, *, mode: str = "exp_inf", eps: float = 1e-4, scale_rewards: bool = True) -> Array:
  """Rank-GRPO per-rank advantages: for each rank position k, group-normalise r_{·,k} over the G lists.

    A[i, k] = (r[i, k] − mean_g r[:, k]) / (std_g r[:, k] + 1e-4).

  "Rank-GRPO: Training LLM-based Conversational Recommender Systems with RL", arXiv 2510.20150 (official
  code defaults: exp_inf rewards, std scaling, eps 1e-4). `hits` [P, G, K] in {0, 1}. Returns [P, G, K];
  broadcast to item tokens with the item (rank) ids used by `rl_jax.objectives.rank_grpo`.
  Example (log_decay, hits [1, 0, 1, 0]): rewards [1.5, 0.5, 0.5, 0].
  """
  r = rank_rewards(hits, mode=mode)
  if r.ndim != 3:
    raise ValueError(f"rank_grpo: hits must be [P, G, K], got {r.shape}.")
  centred = r - r.mean(1, keepdims=True)
  if scale_rewards and r.shape[1] > 1:
    centred = centred / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
  return jax.lax.stop_gradient(centred)


@register
def gigpo(episode_rewards, step_rewards, anchor_ids, step_mask, *, gamma: float = 0.95, omega: float = 1.0,
          mode: str = "mean_norm", eps: float = 1e-6) -> Array:
  """GiGPO: episode-level group advantage plus a step-level advantage over anchor-state groups.

    A^E_i = (R_i − μ)/(σ + eps) ("mean_std_norm") or R_i − μ ("mean_norm") over the N trajectories;
    G_t = r_t + γ G_{t+1} per trajectory; steps of one episode group with the same anchor id form a
    group: A^S = (G − μ_s)/(σ_s + eps) or G − μ_s, 0 for a singleton;  A = A^E + ω A^S.

  "Group-in-Group Policy Optimization for LLM Agent Training", arXiv 2505.10978 (verl-agent defaults:
  γ = 0.95, ω = 1; the normalisation default differs across versions, so `mode` is explicit).
  Shapes: episode_rewards [P, N]; step_rewards, anchor_ids (int, hashable observation ids), step_mask
  [P, N, S]. Returns [P, N, S] (broadcast each step's value to its response tokens).
  """
  if mode not in ("mean_norm", "mean_std_norm"):
    raise ValueError(f"Unknown mode {mode!r}; expected mean_norm or mean_std_norm.")
  r = check_rewards(episode_rewards, method="gigpo")
  m = (jnp.asarray(step_mask) > 0).astype(jnp.float32)
  anchors = jnp.asarray(anchor_ids)
  centred = r - r.mean(1, keepdims=True)
  if r.shape[1] == 1:
    a_ep = r
  elif mode == "mean_std_norm":
    a_ep = centred / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
  else:
    a_ep = centred

  def back(carry, xs):
    rt, mt = xs
    g = jnp.where(mt > 0, rt + gamma * carry, carry)
    return g, g

  xs = (jnp.moveaxis(jnp.asarray(step_rewards, jnp.float32) * m, -1, 0)[::-1], jnp.moveaxis(m, -1, 0)[::-1])
  _, ret = jax.lax.scan(back, jnp.zeros(r.shape), xs)
  ret = jnp.moveaxis(ret[::-1], 0, -1) * m                                            # [P, N, S]
  p, n, s = ret.shape
  flat_a, flat_g, flat_m = anchors.reshape(p, n * s), ret.reshape(p, n * s), m.reshape(p, n * s)
  same = (flat_a[:, :, None] == flat_a[:, None, :]) & (flat_m[:, :, None] > 0) & (flat_m[:, None, :] > 0)
  same = same.astype(jnp.float32)
  cnt = jnp.sum(same, -1)
  mu = jnp.einsum("pij,pj->pi", same, flat_g) / jnp.maximum(cnt, 1.0)
  var = jnp.einsum("pij,pj->pi", same, jnp.square(flat_g)) / jnp.maximum(cnt, 1.0) - mu ** 2
  sd = jnp.sqrt(jnp.maximum(var * cnt / jnp.maximum(cnt - 1.0, 1.0), 0.0))
  a_step = flat_g - mu
  if mode == "mean_std_norm":
    a_step = a_step / (sd + eps)
  a_step = jnp.where(cnt > 1, a_step, 0.0).reshape(p, n, s)
  return jax.lax.stop_gradient((a_ep[..., None] + omega * a_step) * m)
