"""Registry and input checks shared by the advantage estimators."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.checks import check_binary_mask
from rl_jax.registry import Registry

Array = jax.Array
_ESTIMATORS = Registry("advantage estimator")
register = _ESTIMATORS.register
get = _ESTIMATORS.get
names = _ESTIMATORS.names


def check_rewards(rewards, *, min_group: int = 1, method: str = "") -> Array:
  """Validates group rewards [P, G] (float, finite where concrete) and returns them as float32."""
  r = jnp.asarray(rewards)
  if r.ndim != 2:
    raise ValueError(f"{method or 'advantage'}: rewards must be [P, G] (prompts x samples), got shape {r.shape}.")
  if not jnp.issubdtype(r.dtype, jnp.floating) and not jnp.issubdtype(r.dtype, jnp.integer) and r.dtype != bool:
    raise TypeError(f"rewards must be numeric, got {r.dtype}.")
  if r.shape[1] < min_group:
    raise ValueError(f"{method} needs groups of at least {min_group} samples, got G = {r.shape[1]}.")
  if not isinstance(r, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(r))):
    raise ValueError(f"{method or 'advantage'}: rewards contain NaN or inf.")
  return r.astype(jnp.float32)


def check_tokens(tokens, mask, p_g: tuple[int, int], *, method: str = "") -> tuple[Array, Array]:
  """Validates token-level inputs [P, G, T] against the group shape."""
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  if tokens.ndim != 3 or tokens.shape[:2] != tuple(p_g):
    raise ValueError(f"{method}: tokens must be [P, G, T] with (P, G) = {tuple(p_g)}, got {tokens.shape}.")
  if mask.shape != tokens.shape:
    raise ValueError(f"{method}: mask must have shape {tokens.shape}, got {mask.shape}.")
  check_binary_mask("mask", mask, method=method)
  return tokens, (mask > 0).astype(jnp.float32)
