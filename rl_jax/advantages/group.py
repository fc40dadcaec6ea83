"""Sequence-level group-relative advantages: rewards [P, G] → advantages [P, G].

All estimators are stop-gradient constants and compute statistics within each prompt's group.
Unbiased standard deviations (ddof = 1) follow every reference implementation (torch.std).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards, register
from rl_jax.checks import check_hparam

Array = jax.Array


def _scaled(centred: Array, r: Array, std: Array, eps: float) -> Array:
  """centred / (std + eps), and exactly 0 for a group whose rewards are all equal (also with eps = 0)."""
  constant = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
  return jnp.where(constant, 0.0, centred / jnp.where(constant, 1.0, std + eps))


def _group_std(r: Array, ddof: int) -> Array:
  g = r.shape[1]
  if g - ddof <= 0:
    return jnp.ones(r.shape[:1] + (1,))
  return jnp.sqrt(jnp.sum(jnp.square(r - r.mean(1, keepdims=True)), axis=1, keepdims=True) / (g - ddof))


@register
def grpo(rewards, *, eps: float = 1e-6, std_ddof: int = 1, scale_by_std: bool = True) -> Array:
  """GRPO group-normalised advantage: Â_i = (R_i − mean_G R) / (std_G R + eps).

  DeepSeekMath, arXiv 2402.03300. Defaults follow verl (eps = 1e-6, unbiased std); TRL uses eps = 1e-4.
  A group of one sample follows verl (mean 0, std 1, so Â = R). Constant rewards give exactly 0, for any
  eps ≥ 0. Example: R = [1, 0, 0, 0] → [1.5, −0.5, −0.5, −0.5] (eps neglected).
  """
  check_hparam("eps", eps, low=0.0, method="grpo")
  check_hparam("std_ddof", std_ddof, low=0, integer=True, method="grpo")
  r = check_rewards(rewards, method="grpo")
  if r.shape[1] == 1:
    return jax.lax.stop_gradient(r)
  centred = r - r.mean(axis=1, keepdims=True)
  if not scale_by_std:
    return jax.lax.stop_gradient(centred)
  return jax.lax.stop_gradient(_scaled(centred, r, _group_std(r, std_ddof), eps))


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
  A one-sample group: μ = 0, σ = 1 (no virtual sample), so Â = R. K = 0 is GRPO; an augmented group whose
  values are all equal gives exactly 0, for any eps ≥ 0.
  """
  check_hparam("max_reward", max_reward, method="ngrpo")
  check_hparam("add_max_reward_num", add_max_reward_num, low=0, integer=True, method="ngrpo")
  check_hparam("eps", eps, low=0.0, method="ngrpo")
  r = check_rewards(rewards, method="ngrpo")
  if r.shape[1] == 1:
    return jax.lax.stop_gradient(r)
  virtual = jnp.full((r.shape[0], add_max_reward_num), max_reward, jnp.float32)
  aug = jnp.concatenate([r, virtual], axis=1)
  mu = aug.mean(axis=1, keepdims=True)
  return jax.lax.stop_gradient(_scaled(r - mu, aug, _group_std(aug, 1), eps))


@register
def opmd(rewards, *, baseline: str = "mean", tau: float = 1.0) -> Array:
  """OPMD advantage: Â_i = R_i − b, b = mean_G R ("mean") or τ·log mean_G exp(R/τ) ("logavgexp").

  Online policy mirror descent as read by "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm",
  arXiv 2509.24203 (the mirror-descent form is Kimi k1.5's, arXiv 2501.12599). Defaults from the official
  Trinity-RFT code: baseline "mean", τ = 1. A one-sample group has b = 0 (Trinity), so Â = R. Pair with
  the `opmd` objective. Example: R = [1, 0], "logavgexp", τ = 1 → b = log((e + 1)/2) = 0.6201.
  """
  r = check_rewards(rewards, method="opmd")
  if baseline not in ("mean", "logavgexp"):
    raise ValueError(f"Unknown opmd baseline {baseline!r}; expected 'mean' or 'logavgexp'.")
  if not tau > 0:
    raise ValueError(f"opmd needs tau > 0, got {tau}.")
  if r.shape[1] == 1:
    return jax.lax.stop_gradient(r)
  if baseline == "mean":
    b = r.mean(axis=1, keepdims=True)
  else:
    b = tau * (jax.nn.logsumexp(r / tau, axis=1, keepdims=True) - jnp.log(r.shape[1]))
  return jax.lax.stop_gradient(r - b)


@register
def asymre(rewards, *, baseline_shift: float = -0.1) -> Array:
  """AsymRE advantage: Â_i = R_i − (mean_G R + δ_V), a baseline shifted by δ_V (δ_V < 0 favours positives).

  "Asymmetric REINFORCE for off-Policy RL: Balancing positive and negative rewards", arXiv 2506.20520, as
  implemented in Trinity-RFT (arXiv 2509.24203's code): δ_V = −0.1, a one-sample group has baseline 0.
  Pair with the `opmd` objective (Trinity's AsymRE uses the same REINFORCE loss).
  Example: R = [1, 0, 0, 0] → [0.85, −0.15, −0.15, −0.15].
  """
  r = check_rewards(rewards, method="asymre")
  if r.shape[1] == 1:
    return jax.lax.stop_gradient(r)
  return jax.lax.stop_gradient(r - (r.mean(axis=1, keepdims=True) + baseline_shift))
