"""Per-token KL estimators between the policy and a reference (Schulman's k1/k2/k3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives.inputs import check_choice

Array = jax.Array

KL_ESTIMATORS = ("k1", "k2", "k3", "k3+")


def kl_k1(logp: Array, ref_logp: Array) -> Array:
  """k1 = log π_θ − log π_ref (unbiased, high variance)."""
  return logp - ref_logp


def kl_k2(logp: Array, ref_logp: Array) -> Array:
  """k2 = ½ (log π_θ − log π_ref)²."""
  return 0.5 * jnp.square(logp - ref_logp)


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3 = exp(x) − x − 1 with x = log π_ref − log π_θ (≥ 0; DeepSeekMath, arXiv 2402.03300).

  Numerical guards as verl's "low_var_kl": x clamped to [−20, 20], the result to [−10, 10].
  Example: p = 0.5, p_ref = 0.4 → 0.8 − ln 0.8 − 1 = 0.02314.
  """
  x = jnp.clip(ref_logp - logp, -20.0, 20.0)
  return jnp.clip(jnp.exp(x) - x - 1.0, -10.0, 10.0)


def kl_k3_plus(logp: Array, ref_logp: Array) -> Array:
  """k3 value with k2's gradient (straight-through), verl's "k3+": value = k3, ∇ = ∇½(log π_θ − log π_ref)²."""
  k2 = kl_k2(logp, ref_logp)
  return jax.lax.stop_gradient(kl_k3(logp, ref_logp)) + k2 - jax.lax.stop_gradient(k2)


def kl_penalty(logp: Array, ref_logp: Array, estimator: str = "k3") -> Array:
  """Per-token KL estimate [B, T] by name ("k1", "k2", "k3" or "k3+")."""
  check_choice("kl_estimator", estimator, KL_ESTIMATORS)
  return {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3, "k3+": kl_k3_plus}[estimator](logp, ref_logp)
