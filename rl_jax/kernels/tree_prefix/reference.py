"""Pure-jnp references of TEMPO's prefix-tree values (the kernel must match them).

For tokens [P, G, T], a mask [P, G, T] (read as mask > 0) and rewards [P, G]:
  E[p, i, k, j] = 1 if rows i and k of group p are both valid and equal at every position 0..j
  V_next[p, i, j] = Σ_k E[p, i, k, j] r[p, k] / Σ_k E[p, i, k, j]   (0 where the denominator is 0)
  V_cur[p, i, 0] = mean_k r[p, k],  V_cur[p, i, j] = V_next[p, i, j − 1];  both times the mask.
V(s) is the mean reward of the responses that share the prefix s ("Exploiting Tree Structure for
Credit Assignment in RL Training of LLMs", arXiv 2509.18314); the same semantics as
rl_jax.advantages.tree.prefix_values. Values are advantages' inputs: they carry no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def next_values_dense(tokens: Array, mask: Array, rewards: Array) -> Array:
  """V_next [P, G, T] through the full prefix-equality tensor E [P, G, G, T] (memory G² T per prompt)."""
  valid = mask > 0
  same = (tokens[:, :, None, :] == tokens[:, None, :, :]) & valid[:, :, None, :] & valid[:, None, :, :]
  e = jnp.cumprod(same.astype(jnp.int32), axis=-1).astype(jnp.float32)               # [P, G, G, T]
  num = jnp.einsum("pikj,pk->pij", e, rewards.astype(jnp.float32))
  den = jnp.sum(e, axis=2)
  return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)


def next_values_scan(tokens: Array, mask: Array, rewards: Array) -> Array:
  """V_next [P, G, T] by a scan over T carrying "still equal so far" [P, G, G] (memory G² per prompt)."""
  valid = mask > 0
  r = rewards.astype(jnp.float32)

  def step(alive, xs):
    tok, ok = xs                                                                        # [P, G] each
    alive = alive & (tok[:, :, None] == tok[:, None, :]) & ok[:, :, None] & ok[:, None, :]
    e = alive.astype(jnp.float32)
    num = jnp.einsum("pik,pk->pi", e, r)
    den = jnp.sum(e, axis=2)
    return alive, jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)

  p, g, _ = tokens.shape
  alive0 = jnp.ones((p, g, g), bool)
  _, v = jax.lax.scan(step, alive0, (jnp.moveaxis(tokens, -1, 0), jnp.moveaxis(valid, -1, 0)))
  return jnp.moveaxis(v, 0, -1)


def values_from_next(v_next: Array, mask: Array, rewards: Array) -> tuple[Array, Array]:
  """(V_cur, V_next) masked: V_cur shifts V_next one token right, with V(root) = group mean at j = 0."""
  root = jnp.broadcast_to(jnp.mean(rewards.astype(jnp.float32), axis=1)[:, None, None], v_next[..., :1].shape)
  v_cur = jnp.concatenate([root, v_next[..., :-1]], axis=-1)
  m = (mask > 0).astype(jnp.float32)
  return v_cur * m, v_next * m


def tree_prefix_reference(tokens: Array, mask: Array, rewards: Array) -> tuple[Array, Array]:
  """(V_cur, V_next) [P, G, T] through the dense E path; the test oracle."""
  return values_from_next(next_values_dense(tokens, mask, rewards), mask, rewards)
