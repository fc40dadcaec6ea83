"""Sequence-level group-relative advantages: rewards [P, G] → advantages [P, G].

All estimators are stop-gradient constants and compute statistics within each prompt's group.
Unbiased standard deviations (ddof = 1) follow every reference implementation (torch.std).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards, register

Array = jax.Array


def _group_std(r: Array, ddof: int) -> Array:
  g = r.shape[1]
  if g - ddof <= 0:
    return jnp.ones(r.shape[:1] + (1,))
  return jnp.sqrt(jnp.sum(jnp.square(r - r.mean(1, keepdims=True)), axis=1, keepdims=True) / (g - ddof))


@register
def grpo(rewards, *, eps: float = 1e-6, std_ddof: int = 1, scale_by_std: bool = True) -> Array:
  """GRPO group-normalised advantage: Â_i = (R_i − mean_G R) / (std_G R + eps).

  DeepSeekMath, arXiv 2402.03300. Defaults follow verl (eps = 1e-6, unbiased std); TRL uses eps = 1e-4.
  A group of one sample follows verl (mean 0, std 1, so Â = R). Constant rewards give exactly 0.
  Example: R = [1, 0, 0, 0] → [1.5, −0.5, −0.5, −0.5] (eps neglected).
  """
  r = check_rewards(rewards, method="grpo")
  if r.shape[1] == 1:
    return jax.lax.stop_gradient(r)
  centred = r - r.mean(axis=1, keepdims=True)
  if not scale_by_std:
    return jax.lax.stop_gradient(centred)
  return jax.lax.stop_gradient(centred / (_group_std(r, std_ddof) + eps))


@register
def dr_grpo(rewards) -> Array:
  """Dr. GRPO: Â_i = R_i − mean_G R, no std division (arXiv 2503.20783). [1,0,0,0] → [.75, −.25, −.25, −.25]."""
  r = check_rewards(rewards, method="dr_grpo")
  if r.shape[1] == 1:
    return jax.lax.stop_gradient(r)
  return jax.lax.stop_gradient(r - r.mean(axis=1, keepdims=True))


@register
def rloo(rewards) -> Array:
  """RLOO: Â_i = R_i − mean_{j≠i} R_j = G/(G−1)·(R_i − mean_G R).

  "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
  arXiv 2402.14740. A one-sample group follows verl: Â = R. [1,0,0,0] → [1, −1/3, −1/3, −1/3].
  """
  r = check_rewards(rewards, method="rloo")
  g = r.shape[1]
  if g == 1:
    return jax.lax.stop_gradient(r)
  return jax.lax.stop_gradient(g / (g - 1) * (r - r.mean(axis=1, keepdims=True)))


@register
def ngrpo(rewards, *, max_reward: float = 1.0, add_max_reward_num: int = 1, eps: float = 1e-6) -> Array:
  """NGRPO calibration: add K virtual samples of reward r_max to each group's statistics only.

    μ' = mean(R ∪ {r_max}^K), σ' = std_u(R ∪ {r_max}^K), Â_i = (R_i − μ')/(σ' + eps).

  "NGRPO: Negative-enhanced Group Relative Policy Optimization", arXiv 2509.18851 (official code
  defaults r_max = 1, K = 1). All-wrong groups get a negative signal: [0,0,0,0] → −0.4472 each.
  A one-sample group: μ = 0, σ = 1 (no virtual sample), so Â = R.
  """
  r = check_rewards(rewards, method="ngrpo")
  if r.shape[1] == 1:
    return jax.lax.stop_gradient(r)
  virtual = jnp.full((r.shape[0], add_max_reward_num), max_reward, jnp.float32)
  aug = jnp.concatenate([r, virtual], axis=1)
  mu = aug.mean(axis=1, keepdims=True)
  return jax.lax.stop_gradient((r - mu) / (_group_std(aug, 1) + eps))
