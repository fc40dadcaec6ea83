"""Group-level reward shaping for length and reasoning effort: inputs are [P, G] (prompts x samples).

Every function returns new rewards [P, G] (float32, stop-gradient); correctness is 0/1 (or in [0, 1]) and
lengths are completion lengths in tokens. Methods without released code are marked [reconstruction]:
their unknown constants are keywords.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards

Array = jax.Array


def _check_same(name: str, x, shape) -> Array:
  x = jnp.asarray(x)
  if x.shape != tuple(shape):
    raise ValueError(f"{name} must have shape {tuple(shape)} (same as the rewards), got {x.shape}.")
  return x.astype(jnp.float32)


def kimi_length_reward(correct, lengths) -> Array:
  """Kimi k1.5 length reward (arXiv 2501.12599): λ_i = 0.5 − (L_i − L_min)/(L_max − L_min) within the group,
  kept for correct answers and min(0, λ_i) for wrong ones; 0 for a group whose lengths are all equal.
  Example: L = [10, 20, 30], correct = [1, 1, 0] → [0.5, 0, −0.5]."""
  c = check_rewards(correct, method="kimi_length_reward")
  n = _check_same("lengths", lengths, c.shape)
  lo, hi = n.min(axis=1, keepdims=True), n.max(axis=1, keepdims=True)
  lam = jnp.where(hi > lo, 0.5 - (n - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
  return jax.lax.stop_gradient(jnp.where(c > 0, lam, jnp.minimum(lam, 0.0)))


def grpo_lambda_rewards(correct, lengths, *, threshold: float = 0.5, length_weight: float = 1.0) -> Array:
  """GRPO-λ reward switching: a group keeps the length-penalised reward only when enough of it is correct.

    r_i = c_i + w·λ_i  if mean_G c ≥ threshold,  else r_i = c_i   (λ_i: `kimi_length_reward`).

  "Stable Reinforcement Learning for Efficient Reasoning", arXiv 2505.18086. [reconstruction] from the
  paper's description (no code consulted): the switch rule (a fixed correctness-ratio `threshold` per
  group), the length term (Kimi k1.5's) and its weight are keywords.
  Example: correct [1, 1, 0, 1], L [10, 30, 20, 20], threshold 0.5 → [1.5, 0.5, 0, 1].
  """
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"threshold must be a correctness ratio in [0, 1], got {threshold}.")
  c = check_rewards(correct, method="grpo_lambda_rewards")
  keep = c.mean(axis=1, keepdims=True) >= threshold
  return jax.lax.stop_gradient(c + jnp.where(keep, length_weight * kimi_length_reward(c, lengths), 0.0))


def ada_grpo_rewards(rewards, formats, *, step: int, total_steps: int) -> Array:
  """Ada-GRPO (ARM) format-diversity scaling: rare reasoning formats in a group get their reward scaled up,
  the boost decaying to 1 over training.

    α_i(t) = (G / F(o_i)) · decay_i(t),  decay_i(t) = F(o_i)/G + ½ (1 − F(o_i)/G)(1 + cos(π t/T)),  r'_i = α_i r_i,

  F(o_i) = number of the group's samples with o_i's format (integer labels in `formats` [P, G]).
  "ARM: Adaptive Reasoning Model", arXiv 2505.20258. Matches the official code
  (compute_ada_grpo_outcome_advantage, written there as α = 1 + ½(G/F − 1)(1 + cos(πt/T))), whose formats
  are the <ANSWER>/<COT>/<CODE>/<LONG_COT> tags of the response; the code then applies GRPO's
  normalisation to the scaled rewards (`rl_jax.advantages.grpo`). t is clamped to [0, T] here (the code
  does not clamp). At t = 0, α = G/F; at t = T, α = 1.
  Example (G = 4, formats [0, 0, 0, 1], t = 0): α = [4/3, 4/3, 4/3, 4].
  """
  r = check_rewards(rewards, method="ada_grpo_rewards")
  f = jnp.asarray(formats)
  if f.shape != r.shape:
    raise ValueError(f"formats must have shape {r.shape}, got {f.shape}.")
  if total_steps <= 0:
    raise ValueError(f"total_steps must be > 0, got {total_steps}.")
  g = r.shape[1]
  count = jnp.sum(f[:, :, None] == f[:, None, :], axis=2).astype(jnp.float32)      # F(o_i) ≥ 1
  frac = count / g
  t = min(max(step, 0), total_steps) / total_steps
  decay = frac + 0.5 * (1.0 - frac) * (1.0 + math.cos(math.pi * t))
  return jax.lax.stop_gradient(r * decay / frac)


ARM_FORMATS = ("<ANSWER>", "<COT>", "<CODE>", "<LONG_COT>")


def arm_format(text: str) -> int:
  """ARM's response format label: 1 + the index in `ARM_FORMATS` of the tag the response opens with (leading
  whitespace ignored), 0 for a response with none of them (model text is only compared, never run)."""
  head = str(text).lstrip()
  return next((i + 1 for i, tag in enumerate(ARM_FORMATS) if head.startswith(tag)), 0)


def effort_rewards(correct, lengths, effort, *, coef: float = 1.0, reference_lengths=None) -> Array:
  """e1 adaptive effort control: penalise using more than a fraction `effort` of the query's usual length.

    target_i = e_p · L̄_p,  r_i = c_i − coef · max(0, L_i / target_i − 1),

  L̄_p = `reference_lengths` [P] (a running average of the query's chain-of-thought length) or, without
  it, the mean length of the current group; e_p ∈ (0, 1] is the effort [P] given to the prompt.
  "e1: Learning Adaptive Control of Reasoning Effort". [reconstruction] from the abstract only: the
  penalty form, `coef` and the reference length are keywords.
  Example: L = [50, 150], effort 0.5 (L̄ = 100 → target 50) → c − [0, 2].
  """
  c = check_rewards(correct, method="effort_rewards")
  n = _check_same("lengths", lengths, c.shape)
  e = jnp.asarray(effort, jnp.float32).reshape(-1)
  if e.shape != (c.shape[0],):
    raise ValueError(f"effort must have shape ({c.shape[0]},), got {jnp.shape(effort)}.")
  if not isinstance(e, jax.core.Tracer) and not bool(jnp.all((e > 0) & (e <= 1))):
    raise ValueError("effort must lie in (0, 1] for every prompt.")
  ref = n.mean(axis=1) if reference_lengths is None else jnp.asarray(reference_lengths, jnp.float32).reshape(-1)
  target = jnp.maximum(e * ref, 1.0)[:, None]
  return jax.lax.stop_gradient(c - coef * jnp.maximum(n / target - 1.0, 0.0))


def curriculum_budget(step: int, *, start: int, end: int, total_steps: int, schedule: str = "exponential") -> int:
  """Train Long, Think Short token budget at `step`: from `start` down to `end` over `total_steps`, then `end`.

    exponential: B(t) = B_0 (B_T/B_0)^{t/T};  linear: B(t) = B_0 + (B_T − B_0) t/T   (rounded to tokens).

  arXiv 2508.08940. The paper compares decay schedules; the exact shapes and constants here are keywords
  ([reconstruction], official code not consulted). Example (4096 → 1024 over 100 steps, exponential): t = 50 → 2048.
  """
  if schedule not in ("exponential", "linear"):
    raise ValueError(f"Unknown schedule {schedule!r}; expected 'exponential' or 'linear'.")
  if not 0 < end <= start or total_steps <= 0:
    raise ValueError(f"need 0 < end <= start and total_steps > 0, got start={start}, end={end}, T={total_steps}.")
  frac = min(max(step, 0), total_steps) / total_steps
  value = start * (end / start) ** frac if schedule == "exponential" else start + (end - start) * frac
  return int(round(value))


def curriculum_reward(correct: float, length: int, format_ok: float, *, budget: int, w_correct: float = 1.0,
                      w_length: float = 0.5, w_format: float = 0.1) -> float:
  """Train Long, Think Short reward: correctness, length beyond the current budget, and format tags.

    r = w_c·c + w_f·f − w_l·max(0, |y| − B)/B   (`length_penalty` with coef w_l/B).

  arXiv 2508.08940; the weights are keywords ([reconstruction] of the balance the paper describes).
  Example (B = 100): c = 1, |y| = 150, f = 1 → 1 + 0.1 − 0.25 = 0.85.
  """
  from rl_jax.rewards.shaping import length_penalty
  if budget <= 0:
    raise ValueError(f"budget must be > 0, got {budget}.")
  return w_correct * correct + w_format * format_ok + length_penalty(length, target=budget, coef=w_length / budget)


def gcpo_rewards(correct, uses_aux, lengths, *, margin: float = 0.05, aux_weight: float = 1.0,
                 length_weight: float = 0.0, max_len: float = 1.0) -> Array:
  """GCPO (GeometryZero) group contrastive masking: the auxiliary-construction reward of a group is positive,
  negative or masked by whether construction helped within that group.

    Δ_p = acc(c | aux) − acc(c | no aux) over the group (Δ_p = 0 when either side is empty),
    M_p = +1 if Δ_p > margin, −1 if Δ_p < −margin, else 0,
    r_i = c_i + aux_weight · M_p · a_i + length_weight · min(L_i / max_len, 1) · c_i.

  "GeometryZero: Improving Geometry Solving for LLM with Group Contrastive Policy Optimization", arXiv
  2506.07160. [reconstruction] from the paper's abstract and a summary of its method (the official code was not
  reachable): R_aux(o) = 1 when o constructs auxiliary lines (`uses_aux` [P, G], from the task's detector); the
  accuracy-difference form of the mask, its `margin`, the weights and the length term (rewarding longer correct
  chains, capped at `max_len` tokens; off by default) are assumptions, each a keyword.
  Example: correct [1, 1, 0, 0], aux [1, 1, 0, 1] → Δ = 2/3 − 0 > 0.05 → [2, 2, 0, 1].
  """
  c = check_rewards(correct, method="gcpo_rewards")
  a = _check_same("uses_aux", uses_aux, c.shape)
  n = _check_same("lengths", lengths, c.shape)
  if margin < 0 or max_len <= 0:
    raise ValueError(f"gcpo_rewards needs margin >= 0 and max_len > 0, got {margin}, {max_len}.")
  with_aux, without = a.sum(axis=1), (1.0 - a).sum(axis=1)
  acc_aux = (c * a).sum(axis=1) / jnp.maximum(with_aux, 1.0)
  acc_plain = (c * (1.0 - a)).sum(axis=1) / jnp.maximum(without, 1.0)
  delta = jnp.where((with_aux > 0) & (without > 0), acc_aux - acc_plain, 0.0)
  sign = jnp.where(delta > margin, 1.0, jnp.where(delta < -margin, -1.0, 0.0))[:, None]
  length = length_weight * jnp.minimum(n / max_len, 1.0) * c
  return jax.lax.stop_gradient(c + aux_weight * sign * a + length)
