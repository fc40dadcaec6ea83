"""The one place where per-token losses become an objective: weights, aggregation, KL, metrics.

Every named method computes its per-token policy loss with pieces from `ratios` and
`trust_regions`, then calls `policy_loss` (the analogue of a `make_loss`): the rest is shared.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from rl_jax.objectives.aggregation import aggregate, masked_max, masked_mean
from rl_jax.objectives.divergences import kl_penalty
from rl_jax.objectives.inputs import (PolicyInputs, check_choice, check_hparam, clean_token_array, is_concrete,
                                      prepare)
from rl_jax.objectives.aggregation import AGG_MODES
from rl_jax.objectives.divergences import KL_ESTIMATORS
from rl_jax.registry import Registry

Array = jax.Array
sg = jax.lax.stop_gradient

_OBJECTIVES = Registry("objective")


def _pad_to(x, b: int, t: int, b2: int, t2: int):
  """Zero-pads an array whose leading dims are (b, t) to (b2, t2), or whose leading dim is b = 0 to b2."""
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    return x
  shape = tuple(x.shape)
  if shape[:2] == (b, t):
    return jnp.pad(x, [(0, b2 - b), (0, t2 - t)] + [(0, 0)] * (len(shape) - 2))
  if b == 0 and shape[:1] == (0,):
    return jnp.pad(x, [(0, b2)] + [(0, 0)] * (len(shape) - 1))
  return x


def empty_batch_safe(fn: Callable) -> Callable:
  """`fn` that also takes an empty batch (B = 0 or T = 0): the call runs on inputs zero-padded to at least
  one row (`group_size` rows when given) and one token, with mask 0 there, so it returns what an all-masked
  batch gives: loss 0, gradient 0 (of the original shape) and finite metrics."""
  @functools.wraps(fn)
  def wrapped(logp, *args, **kw):
    shape = tuple(jnp.shape(logp))
    mask = args[2] if len(args) > 2 else kw.get("mask")
    if len(shape) != 2 or 0 not in shape or tuple(jnp.shape(mask)) != shape:
      return fn(logp, *args, **kw)
    g = kw.get("group_size")
    b2 = shape[0] or (g if isinstance(g, int) and g > 0 else 1)
    pad = lambda x: _pad_to(x, shape[0], shape[1], b2, max(shape[1], 1))
    return fn(pad(logp), *map(pad, args), **{k: pad(v) for k, v in kw.items()})
  return wrapped


def register(fn: Callable) -> Callable:
  """Adds an objective under its function name (wrapped by `empty_batch_safe`)."""
  return _OBJECTIVES.register(empty_batch_safe(fn))


get = _OBJECTIVES.get            # the objective registered as `name`
names = _OBJECTIVES.names        # sorted names of every registered objective


def beta_active(beta) -> bool:
  """True unless beta is a concrete 0 (a traced beta always computes the KL term)."""
  return not (is_concrete(beta) and beta == 0)


def start(logp, old_logp, advantages, mask, ref_logp, *, beta, kl_estimator, agg, max_len=None,
          eps=()) -> PolicyInputs:
  """Validates the common arguments of an objective and returns the cleaned inputs.

  `eps` lists (name, value) pairs of trust-region sizes that must be ≥ 0.
  """
  check_choice("aggregation mode (agg)", agg, AGG_MODES)
  check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
  check_hparam("beta", beta)
  for name, value in eps:
    check_hparam(name, value)
  if agg == "seq-mean-token-sum-norm" and max_len is None:
    raise ValueError("agg='seq-mean-token-sum-norm' needs max_len (the constant normaliser L_const).")
  return prepare(logp, old_logp, advantages, mask, ref_logp, need_ref=beta_active(beta))


def check_dual_clip(dual_clip_c) -> None:
  if dual_clip_c is not None and is_concrete(dual_clip_c) and not dual_clip_c > 1.0:
    raise ValueError(f"dual_clip_c must be > 1 (or None to disable), got {dual_clip_c}.")


def policy_loss(per_token: Array, inp: PolicyInputs, *, ratio: Array, clipped: Array, agg: str,
                max_len: Optional[float] = None, beta=0.0, kl_estimator: str = "k3",
                token_weights: Optional[Array] = None,
                extra_metrics: Optional[dict] = None) -> tuple[Array, dict]:
  """loss = agg(w ⊙ ℓ_pg) + β · agg(KL), with the shared metrics.

  Args:
    per_token: [B, T] policy-gradient loss per token (to minimise).
    inp: cleaned inputs from `start`.
    ratio: [B, T] the importance ratio the method uses (for ratio_mean / ratio_max).
    clipped: [B, T] 1 where the token's update was clipped or gated off.
    agg: aggregation mode; max_len its constant for "seq-mean-token-sum-norm".
    beta, kl_estimator: KL-to-reference coefficient and estimator; the KL term is aggregated
      with the same mode and added after aggregation (verl convention).
    token_weights: optional [B, T] stop-gradient weights multiplying ℓ_pg (TIS/MIS corrections,
      token selection such as 80/20 forking tokens).
  Returns:
    (loss, metrics) with metrics pg_loss, clip_frac, ratio_mean, ratio_max, and kl when β > 0.
  """
  m = inp.mask
  if token_weights is not None:
    per_token = per_token * sg(clean_token_array("token_weights", token_weights, m))
  pg = aggregate(per_token * m, m, agg, max_len=max_len)
  metrics = {
      "pg_loss": pg,
      "clip_frac": masked_mean(clipped, m),
      "ratio_mean": masked_mean(sg(ratio), m),
      "ratio_max": masked_max(sg(ratio), m),
  }
  loss = pg
  if beta_active(beta):
    kl = aggregate(kl_penalty(inp.logp, inp.ref_logp, kl_estimator) * m, m, agg, max_len=max_len)
    loss = pg + beta * kl
    metrics["kl"] = kl
  if extra_metrics:
    metrics.update(extra_metrics)
  metrics["loss"] = loss
  return loss, metrics


def optional_token_array(name: str, x, inp: PolicyInputs, *, required: bool, method: str, dtype=jnp.float32):
  """Cleans a method-specific per-token keyword array, or raises if a required one is missing."""
  if x is None:
    if required:
      raise ValueError(f"{method} needs the keyword array {name} of shape {tuple(inp.mask.shape)}.")
    return None
  return clean_token_array(name, x, inp.mask, dtype=dtype)


def kernel_impl(use_kernel) -> str:
  """`use_kernel=True` → the Pallas kernel's "auto" choice; a string ("interpret", "pallas", ...) is passed on."""
  return "auto" if use_kernel is True else str(use_kernel)
