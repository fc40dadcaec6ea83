"""Token selection and weighting rules: each returns a weight/mask that multiplies the per-token loss
(pass it as `token_weights` to any objective), or a reshaped advantage."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import register
from rl_jax.checks import check_binary_mask, check_hparam

Array = jax.Array


@register
def forking_tokens(entropy, mask, *, rho: float = 0.2, keep: str = "top", rounding: str = "ceil") -> Array:
  """80/20 rule: keep the top-ρ fraction of valid tokens by entropy (the "forking" tokens).

    τ = the k-th largest valid entropy, k = max(1, ⌈ρ N_valid⌉);  weight = 1[H ≥ τ] ("top"),
    1[H < τ] ("bottom", the complementary 80%) or 1 ("all").

  "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning",
  arXiv 2506.01939. k rounds up as the official code does (int(ρN + 0.9999), which also absorbs float
  error: ρN = 0.2·15 keeps 3); `rounding="floor"` keeps ⌊ρN⌋ instead. The threshold is over the whole
  batch passed in (the paper's mini-batch); ties at τ are kept. Keep the objective's denominator over all
  valid tokens (the paper's form) by passing the result as `token_weights`; works for [B, T] or [P, G, T].
  """
  if keep not in ("top", "bottom", "all"):
    raise ValueError(f"Unknown keep {keep!r}; expected top, bottom or all.")
  if rounding not in ("ceil", "floor"):
    raise ValueError(f"Unknown rounding {rounding!r}; expected ceil or floor.")
  check_hparam("rho", rho, low=0.0, high=1.0, strict=True, method="forking_tokens")
  h = jnp.asarray(entropy, jnp.float32)
  check_binary_mask("mask", mask, method="forking_tokens")
  valid = jnp.asarray(mask) > 0
  n = jnp.sum(valid)
  k = jnp.floor(rho * n + (0.9999 if rounding == "ceil" else 1e-4))
  k = jnp.maximum(k, 1).astype(jnp.int32)
  sorted_h = jnp.sort(jnp.where(valid, h, -jnp.inf).reshape(-1))[::-1]
  tau = sorted_h[jnp.clip(k - 1, 0, sorted_h.size - 1)]
  top = (h >= tau) & valid
  out = {"top": top, "bottom": valid & ~top, "all": valid}[keep]
  return out.astype(jnp.float32)


@register
def seed_grpo(advantages, answer_ids, *, alpha: float = 1.0) -> Array:
  """SEED-GRPO: scale a group's advantages down by its semantic entropy over final answers.

    SE = −Σ_c p_c log p_c over answer clusters (p_c = |C_c|/G),  A ← A·(1 − α SE / log G).

  "SEED-GRPO: Semantic Entropy Enhanced GRPO for Uncertainty-Aware Policy Optimization",
  arXiv 2505.12346 (paper's linear variant; α is not pinned there). `answer_ids` [P, G] cluster ids.
  """
  a = jnp.asarray(advantages, jnp.float32)
  ids = jnp.asarray(answer_ids)
  g = a.shape[1]
  same = (ids[:, :, None] == ids[:, None, :]).astype(jnp.float32)
  p = jnp.sum(same, -1) / g                                                # p of each member's cluster
  se = -jnp.sum(jnp.log(p), -1) / g                                        # = −Σ_c p_c log p_c
  scale = 1.0 - alpha * se / math.log(g) if g > 1 else jnp.ones_like(se)
  return jax.lax.stop_gradient(a * scale[:, None])


@register
def hicra(advantages, planning_mask, *, alpha: float = 0.2) -> Array:
  """HICRA: amplify planning tokens, A_t = A + α|A|·1[t ∈ S] (S = strategic-gram tokens, given as a mask).

  "Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning", arXiv 2509.03646 (paper only;
  α = 0.2 as reported; the strategic-gram extraction is up to the caller). `advantages` broadcast to
  the mask's shape ([P, G, T] or [B, T]).
  """
  s = jnp.asarray(planning_mask, jnp.float32)
  a = jnp.asarray(advantages, jnp.float32)
  a = a.reshape(a.shape + (1,) * (s.ndim - a.ndim))
  return jax.lax.stop_gradient(a + alpha * jnp.abs(a) * s)


@register
def lp_reg(logp, proxy_logp, advantages, mask, *, neg_frac: float = 0.01) -> Array:
  """Lp-Reg token selection: the lowest-probability negative-advantage tokens still below the min-p proxy.

  Among valid tokens with A < 0 take the k = max(1, ⌊neg_frac·n_neg⌋) lowest log π_θ, and keep those
  with log π_θ < log π_proxy (applied only when k > 1, as in the code). Returns a 0/1 mask [B, T]: on
  these tokens the official loss replaces PPO-clip by −A r + β KL_k3(π_θ ‖ π_proxy).
  "Low-probability Tokens Sustain Exploration in RLVR" (Lp-Reg), arXiv 2510.03222.
  """
  lp = jnp.asarray(logp, jnp.float32)
  a = jnp.asarray(advantages, jnp.float32)
  a = a.reshape(a.shape + (1,) * (lp.ndim - a.ndim))
  neg = (jnp.asarray(mask) > 0) & (a < 0)
  n_neg = jnp.sum(neg)
  k = jnp.maximum(jnp.floor(neg_frac * n_neg), 1).astype(jnp.int32)
  score = jnp.where(neg, lp, jnp.inf).reshape(-1)
  order = jnp.argsort(score, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size)).reshape(lp.shape)
  chosen = neg & (rank < k) & (lp < jnp.asarray(proxy_logp, jnp.float32)) & (k > 1)
  return chosen.astype(jnp.float32)


@register
def dars(accuracy, *, n: int = 8, n_max: int = 32, schedule: str = "ET", use_std: bool = False) -> Array:
  """DARS re-sampling allocation: extra rollouts per prompt from its first-stage accuracy.

    a ≤ 1e-6 → a := 0.5/N; a ≥ 0.5 → 0 extra;  S(a) = 2a(1−a) (no std) or 2 sqrt(a(1−a));
    A_peak = 0.5N (no std) or N;  ET: ⌈(A_peak − N S)/S⌉;  HW: ⌈(2(1−a)A_peak − N S)/S⌉;  min(·, N_max − N).

  "Depth-Breadth Synergy in RLVR", arXiv 2508.13755 (released scripts: no std). `accuracy` [P].
  Toy (N = 8): a = 0 → ET 24 / HW 24; 0.125 → 11 / 24; 0.25 → 3 / 8; 0.375 → 1 / 3; 0.5 → 0 / 0.
  """
  if schedule not in ("ET", "HW"):
    raise ValueError(f"Unknown schedule {schedule!r}; expected ET or HW.")
  a = jnp.asarray(accuracy, jnp.float32)
  a = jnp.where(a <= 1e-6, 0.5 / n, a)
  s = 2 * jnp.sqrt(a * (1 - a)) if use_std else 2 * a * (1 - a)
  peak = float(n) if use_std else 0.5 * n
  target = peak if schedule == "ET" else 2 * (1 - a) * peak
  extra = jnp.ceil((target - n * s) / s - 1e-6)
  extra = jnp.clip(extra, 0, n_max - n)
  return jnp.where(a >= 0.5, 0, extra).astype(jnp.int32)


@register
def tw_grpo(vocab_logp, mask, *, group_size: int, max_weight: float = 1.7) -> Array:
  """TW-GRPO token weights [B, T] from the intra-group divergence of next-token distributions per position.

    μ_t = mean_{i∈group} log π_i(·|t)  (masked positions use the uniform log(1/V)),
    D_t = mean_i Σ_v (e^{d} − d − 1),  d = clip(μ_t − log π_i(v|t), −11, 11),
    w_t = 1 + (α − 1)(D_t − min_t D)/(max_t D − min_t D + 1e-8), shared by the group's rows, × mask.

  "Reinforcing Video Reasoning with Focused Thinking", arXiv 2505.24718. Follows the official code
  (compute_token_importance_kl_logs_uniform; min/max over all positions of the group, padding included)
  with α = `max_weight` = 1.7 from its tw-grpo.sh. `vocab_logp` [B, T, V] are full-vocabulary log-probs
  (rows grouped contiguously); pass the result as `token_weights` with agg="token-mean" (the code's
  loss). Needs full-vocabulary log-probs, which rl_jax's training step does not compute.
  """
  lp = jnp.asarray(vocab_logp, jnp.float32)
  b, t, v = lp.shape
  if jnp.shape(mask) != (b, t):
    raise ValueError(f"mask must have shape {(b, t)}, got {jnp.shape(mask)}.")
  if group_size < 1 or b % group_size:
    raise ValueError(f"group_size must be a positive int dividing the batch {b}, got {group_size}.")
  m = (jnp.asarray(mask) > 0).reshape(b // group_size, group_size, t, 1)
  x = jnp.where(m, lp.reshape(b // group_size, group_size, t, v), -math.log(v))
  d = jnp.clip(x.mean(axis=1, keepdims=True) - x, -11.0, 11.0)
  div = jnp.sum(jnp.exp(d) - d - 1.0, axis=-1).mean(axis=1)                        # [P, T]
  lo, hi = div.min(axis=1, keepdims=True), div.max(axis=1, keepdims=True)
  w = 1.0 + (max_weight - 1.0) * (div - lo) / (hi - lo + 1e-8)
  w = jnp.repeat(w, group_size, axis=0)
  return jax.lax.stop_gradient(w * (jnp.asarray(mask) > 0))


@register
def prefix_retention(mask, *, step: int, total_steps: int, start_frac: float = 0.2, end_frac: float = 1.0) -> Array:
  """PPPO progressive prefix retention: keep the first ⌈f·L_i⌉ tokens of each response, f growing linearly
  from `start_frac` to `end_frac` over `total_steps` (weights [.., T] to pass as `token_weights`).

  "Well Begun, Half Done: RL with Prefix Optimization for LLM Reasoning" (PPPO). [reconstruction] from
  the abstract: the schedule shape and both fractions are keywords. The paper's continuation accumulated
  reward (several continuations sampled per prefix) needs prefix-continuation rollouts and is not here.
  Example: L = 10, f = 0.25 → tokens 0..2 kept.
  """
  if not 0.0 < start_frac <= end_frac <= 1.0 or total_steps <= 0:
    raise ValueError(f"need 0 < start_frac <= end_frac <= 1 and total_steps > 0, got {start_frac}, {end_frac}, "
                     f"{total_steps}.")
  m = jnp.asarray(mask) > 0
  frac = start_frac + (end_frac - start_frac) * min(max(step, 0), total_steps) / total_steps
  keep = jnp.ceil(frac * jnp.sum(m, axis=-1, keepdims=True) - 1e-6)
  pos = jnp.cumsum(m, axis=-1) - 1                                                   # index among valid tokens
  return (m & (pos < keep)).astype(jnp.float32)
