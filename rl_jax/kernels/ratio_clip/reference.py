"""Pure-jnp reference of the fused ratio / trust-region loss (the kernel must match it).

Per token, with Δ = clamp(logp − old_logp, −20, 20), r = exp(Δ) and masked tokens zeroed first:
  "clip":  ℓ = max(−A r, −A clip(r, 1−ε_l, 1+ε_h)); dual clip ℓ = min(ℓ, −A c) for A < 0 (c given)
  "sapo":  ℓ = −A σ(τ(r−1))·4/τ,  τ = τ_pos if A > 0 else τ_neg
  "cispo": ℓ = −sg(clip(r, 1−ε_l, 1+ε_h))·A·logp
Returns (per-token loss, clipped indicator), both [B, T] float32, 0 on masked tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("clip", "sapo", "cispo")


def token_terms(lp, old, a, m, *, mode, eps_low, eps_high, dual_clip_c, tau_pos, tau_neg):
  """Loss, clipped indicator and d loss / d logp for one block (shared by reference and kernels)."""
  valid = m > 0
  lp = jnp.where(valid, lp, 0.0)
  old = jnp.where(valid, old, 0.0)
  a = jnp.where(valid, a, 0.0)
  raw = lp - old
  d = jnp.clip(raw, -20.0, 20.0)
  inside = (raw > -20.0) & (raw < 20.0)
  r = jnp.exp(d)
  if mode == "clip":
    unclipped = -a * r
    clipped_loss = -a * jnp.clip(r, 1.0 - eps_low, 1.0 + eps_high)
    is_clipped = clipped_loss > unclipped
    loss = jnp.maximum(unclipped, clipped_loss)
    grad = jnp.where(is_clipped | ~inside, 0.0, -a * r)
    if dual_clip_c is not None:
      cap = -a * dual_clip_c
      binds = (a < 0) & (cap < loss)
      loss = jnp.where(binds, cap, loss)
      grad = jnp.where(binds, 0.0, grad)
      is_clipped = is_clipped | binds
  elif mode == "sapo":
    tau = jnp.where(a > 0, tau_pos, tau_neg)
    p = jax.nn.sigmoid(tau * (r - 1.0))
    loss = -a * p * 4.0 / tau
    grad = jnp.where(inside, -a * 4.0 * p * (1.0 - p) * r, 0.0)
    is_clipped = jnp.zeros_like(valid)
  else:
    w = jnp.clip(r, 1.0 - eps_low, 1.0 + eps_high)
    loss = -w * a * lp
    grad = -w * a
    is_clipped = w != r
  zero = jnp.zeros_like(loss)
  return (jnp.where(valid, loss, zero), jnp.where(valid & is_clipped, 1.0, 0.0).astype(jnp.float32),
          jnp.where(valid, grad, zero))


def ratio_clip_reference(logp, old_logp, adv, mask, *, mode="clip", eps_low=0.2, eps_high=0.2, dual_clip_c=None,
                         tau_pos=1.0, tau_neg=1.05):
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  loss, clipped, _ = token_terms(f32(logp), f32(old_logp), f32(adv), f32(mask), mode=mode, eps_low=eps_low,
                                 eps_high=eps_high, dual_clip_c=dual_clip_c, tau_pos=tau_pos, tau_neg=tau_neg)
  return loss, clipped
