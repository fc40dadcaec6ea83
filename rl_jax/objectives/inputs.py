"""Input validation and masking shared by every objective.

Every objective takes `logp, old_logp, mask` of shape [B, T] and `advantages` of shape [B] or
[B, T]. Checks run at trace time (they cost nothing under jit). Masked-out positions may hold
anything, NaN included: they are replaced by 0 before any arithmetic, so neither values nor
gradients can leak from them.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from rl_jax.checks import check_binary_mask

Array = jax.Array


class PolicyInputs(NamedTuple):
  """Cleaned objective inputs, all float32 and zero wherever `mask` is 0."""
  logp: Array          # [B, T] log π_θ of the taken tokens (differentiable)
  old_logp: Array      # [B, T] log π_old (constant)
  adv: Array           # [B, T] advantages broadcast to tokens (constant)
  seq_adv: Optional[Array]  # [B] when sequence-level advantages were given, else None
  mask: Array          # [B, T] float32 in {0, 1}
  ref_logp: Optional[Array]  # [B, T] log π_ref (constant) or None


def _check_float(name: str, x) -> None:
  if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating array, got dtype {jnp.asarray(x).dtype}.")


def check_token_array(name: str, x, shape: tuple[int, ...], *, floating: bool = True) -> None:
  """Raises a ValueError unless `x` has exactly `shape`."""
  if x is None:
    raise ValueError(f"{name} is required for this objective (an array of shape {shape}).")
  x_shape = tuple(jnp.shape(x))
  if x_shape != tuple(shape):
    raise ValueError(f"{name} must have shape {tuple(shape)} (same as logp), got {x_shape}.")
  if floating:
    _check_float(name, x)


def where_mask(x: Array, valid: Array) -> Array:
  """x where valid, 0 elsewhere (gradient-safe: no NaN flows from masked entries)."""
  return jnp.where(valid, x, jnp.zeros_like(x))


def clean_token_array(name: str, x, mask: Array, *, dtype=jnp.float32) -> Array:
  """Validates a per-token keyword array ([B, T]) and zeroes it where mask is 0."""
  check_token_array(name, x, mask.shape, floating=jnp.issubdtype(dtype, jnp.floating))
  return where_mask(jnp.asarray(x).astype(dtype), mask > 0)


def prepare(logp, old_logp, advantages, mask, ref_logp=None, *, need_ref: bool = False) -> PolicyInputs:
  """Checks shapes/dtypes and returns masked float32 inputs.

  Args:
    logp: [B, T] current-policy log-probs of the taken tokens.
    old_logp: [B, T] behaviour-policy log-probs.
    advantages: [B] (one per sequence) or [B, T] (one per token).
    mask: [B, T], 1 on completion tokens, 0 elsewhere (bool, int or float); other values are an error
      when the mask is concrete (weights go in `token_weights`).
    ref_logp: optional [B, T] reference-model log-probs.
    need_ref: raise if `ref_logp` is missing (KL penalty requested).
  """
  if jnp.ndim(logp) != 2:
    raise ValueError(f"logp must be rank 2 [B, T], got shape {tuple(jnp.shape(logp))}.")
  shape = tuple(jnp.shape(logp))
  _check_float("logp", logp)
  check_token_array("old_logp", old_logp, shape)
  check_token_array("mask", mask, shape, floating=False)
  check_binary_mask("mask", mask)
  adv_shape = tuple(jnp.shape(advantages))
  if adv_shape not in (shape[:1], shape):
    raise ValueError(f"advantages must have shape {shape[:1]} or {shape}, got {adv_shape}.")
  _check_float("advantages", advantages)
  if need_ref and ref_logp is None:
    raise ValueError("beta > 0 needs ref_logp (reference-model log-probs [B, T]); pass it or set beta=0.")
  valid = jnp.asarray(mask) > 0
  m = valid.astype(jnp.float32)
  f32 = lambda x: jnp.asarray(x).astype(jnp.float32)
  seq_adv = None
  if len(adv_shape) == 1:
    has_tokens = jnp.sum(m, axis=-1) > 0
    seq_adv = where_mask(f32(advantages), has_tokens)               # [B]
    adv = where_mask(jnp.broadcast_to(seq_adv[:, None], shape), valid)  # [B, T]
  else:
    adv = where_mask(f32(advantages), valid)
  ref = None
  if ref_logp is not None:
    check_token_array("ref_logp", ref_logp, shape)
    ref = where_mask(f32(ref_logp), valid)
  return PolicyInputs(where_mask(f32(logp), valid), where_mask(f32(old_logp), valid), adv, seq_adv, m, ref)


def is_concrete(x) -> bool:
  return isinstance(x, numbers.Number)


def check_hparam(name: str, value, *, low: float = 0.0, strict: bool = False) -> None:
  """Raises for a concrete hyperparameter below `low` (or NaN). Traced values are not checked."""
  if value is None or not is_concrete(value):
    return
  bad = math.isnan(value) or (value <= low if strict else value < low)
  if bad:
    op = ">" if strict else ">="
    raise ValueError(f"{name} must be {op} {low}, got {value}.")


def check_choice(name: str, value: str, choices) -> None:
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; expected one of {sorted(choices)}.")
