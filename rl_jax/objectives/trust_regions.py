"""Per-token surrogate losses with their trust regions (values to minimise).

Each returns `(per_token_loss, clipped)`: the loss ℓ_{i,t} and a 0/1 float marking tokens whose
update was clipped or gated off (for the clip-fraction metric). Inputs are [B, T]; bounds may be
scalars or [B, T] arrays (dynamic / entropy-adaptive trust regions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
sg = jax.lax.stop_gradient


def clip_bounds_loss(ratio: Array, adv: Array, lower, upper) -> tuple[Array, Array]:
  """PPO-clip with explicit ratio bounds: ℓ = max(−Â r, −Â clip(r, lower, upper)).

  Objective form: min(r Â, clip(r, lower, upper) Â) (PPO, Schulman et al., arXiv 1707.06347).
  `clipped` marks tokens where the clipped branch is strictly larger (its gradient is zero).
  """
  unclipped = -adv * ratio
  clipped_loss = -adv * jnp.clip(ratio, lower, upper)
  is_clipped = clipped_loss > unclipped
  return jnp.maximum(unclipped, clipped_loss), is_clipped.astype(jnp.float32)


def clipped_surrogate(ratio: Array, adv: Array, *, eps_low: float, eps_high: float) -> tuple[Array, Array]:
  """ℓ = −min(r Â, clip(r, 1 − ε_low, 1 + ε_high) Â); ε_high > ε_low is DAPO's clip-higher."""
  return clip_bounds_loss(ratio, adv, 1.0 - eps_low, 1.0 + eps_high)


def dual_clip(per_token: Array, adv: Array, clipped: Array, c: float) -> tuple[Array, Array]:
  """Dual clip for negative advantages: ℓ ← min(ℓ, −Â·c) where Â < 0 (Ye et al., arXiv 1912.09729).

  Caps the loss of a negative-advantage token at c·|Â| when its ratio exceeds c (c > 1).
  Example (ε = 0.2, c = 3): r = 5, Â = −1 → ℓ = min(5, 3) = 3.
  """
  cap = -adv * c
  binds = (adv < 0) & (cap < per_token)
  return jnp.where(binds, cap, per_token), jnp.maximum(clipped, binds.astype(jnp.float32))


def sapo_gate(ratio: Array, adv: Array, *, tau_pos: float, tau_neg: float) -> tuple[Array, Array]:
  """SAPO soft gate: ℓ = −f(r; τ) Â with f = σ(τ(r − 1))·4/τ, τ = τ_pos if Â > 0 else τ_neg.

  Soft Adaptive Policy Optimization, arXiv 2511.20347. No hard clip: the gradient weight
  4p(1−p)·r (p = σ(τ(r−1))) equals 1 at r = 1 and decays smoothly off-policy. Nothing is clipped.
  Example: r = 1.2, Â = 1, τ = 1 → f = 2.19934.
  """
  tau = jnp.where(adv > 0, tau_pos, tau_neg)
  gate = jax.nn.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
  return -gate * adv, jnp.zeros_like(ratio)


def cispo_weight(ratio: Array, *, eps_low: float, eps_high: float, cap_mode: str = "relative") -> Array:
  """CISPO's clipped IS weight r̂ (stop-gradient): clip(r, 1−ε_low, 1+ε_high) (verl, "relative"),
  or min(r, ε_high) with ε_high an absolute cap (TRL, "absolute")."""
  if cap_mode == "relative":
    return sg(jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high))
  return sg(jnp.minimum(ratio, eps_high))


def dcpo_bounds(old_logp: Array, *, eps_low: float, eps_high: float, max_high: float) -> tuple[Array, Array]:
  """DCPO dynamic-adaptive clipping bounds from the old token probability q = π_old(y_t).

  Solving |(r − 1)·r·q| ≤ ε for r (Dynamic Clipping Policy Optimization, arXiv 2509.02333):
    lo(q) = ½ + ½ sqrt(max(1 − 4 ε_low / q, 0)),  hi(q) = min(½ + ½ sqrt(1 + 4 ε_high / q), max_high).
  Rare tokens (small q) get a wide region. Constants of q, so no gradient. q is clamped to ≥ 1e-30.
  Example: q = 0.9, ε = (0.16, 0.2) → [0.7687, 1.1872].
  """
  q = jnp.maximum(jnp.exp(sg(old_logp)), 1e-30)
  lo = 0.5 + 0.5 * jnp.sqrt(jnp.maximum(1.0 - 4.0 * eps_low / q, 0.0))
  hi = jnp.minimum(0.5 + 0.5 * jnp.sqrt(1.0 + 4.0 * eps_high / q), max_high)
  return lo, hi
