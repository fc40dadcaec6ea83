"""Token-selective credit: rewards for different facets of a response reach only the tokens that produced
them, then the group normalises per token (Zoom-Zero)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards, register

Array = jax.Array


@register
def zoom_zero(shared, span_reward, outside_reward, span_start, span_end, mask, *, scale: float = 1.0 / 3.0,
              eps: float = 1e-6) -> Array:
  """Zoom-Zero token-selective credit [P, G, T].

    s_{i,t} = scale · (S_i + 1[t ∈ [a_i, b_i)]·R^span_i + 1[t ∉ [a_i, b_i)]·R^out_i)   on valid tokens,
    Â_{i,t} = (s_{i,t} − μ_g)/(σ_g + eps),  μ_g, σ_g (ddof 1) over all valid tokens of the group.

  "Zoom-Zero: Reinforced Coarse-to-Fine Video Understanding via Temporal Zoom-in" (its code's README gives
  no arXiv id); follows the official code (compute_grpo_select_outcome_advantage): S = format + zoom-in
  rewards on every token, the answer reward on the answer span [a, b) and the localisation (IoU) reward on
  the other tokens, scale 1/3; a group of one response keeps μ = 0, σ = 1. Inputs: rewards [P, G], span
  bounds [P, G] (token indices), mask [P, G, T]. Finding the spans (answer vs timestamps) is the task's
  parser.
  """
  s = check_rewards(shared, method="zoom_zero")
  r_in = check_rewards(span_reward, method="zoom_zero")
  r_out = check_rewards(outside_reward, method="zoom_zero")
  m = jnp.asarray(mask) > 0
  if m.ndim != 3 or m.shape[:2] != s.shape or r_in.shape != s.shape or r_out.shape != s.shape:
    raise ValueError(f"zoom_zero: rewards must be [P, G] and mask [P, G, T] with the same (P, G), got "
                     f"{s.shape}, {r_in.shape}, {r_out.shape}, {m.shape}.")
  t = jnp.arange(m.shape[2])[None, None, :]
  a = jnp.asarray(span_start)[..., None]
  b = jnp.asarray(span_end)[..., None]
  inside = (t >= a) & (t < b)
  score = scale * (s[..., None] + jnp.where(inside, r_in[..., None], r_out[..., None]))
  score = jnp.where(m, score, 0.0)
  n = jnp.sum(m, axis=(1, 2), keepdims=True).astype(jnp.float32)
  mean = jnp.sum(score, axis=(1, 2), keepdims=True) / jnp.maximum(n, 1.0)
  var = jnp.sum(jnp.where(m, jnp.square(score - mean), 0.0), axis=(1, 2), keepdims=True) / jnp.maximum(n - 1.0, 1.0)
  if s.shape[1] == 1:
    mean, std = jnp.zeros_like(mean), jnp.ones_like(var)
  else:
    std = jnp.sqrt(var)
  return jax.lax.stop_gradient(jnp.where(m, (score - mean) / (std + eps), 0.0))
