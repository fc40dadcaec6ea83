"""Training–inference mismatch corrections: TIS and MIS/IcePop weights, as wrappers over any objective.

The sampler (vLLM, SGLang, our own) and the trainer compute slightly different probabilities for the
same tokens. With k_t = π_old(y_t)/μ(y_t) (trainer over rollout engine), the per-token policy loss of
the base objective is multiplied by a stop-gradient weight w_t before aggregation (the KL term is not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives.aggregation import masked_mean
from rl_jax.objectives.core import get, register
from rl_jax.objectives.inputs import check_choice, check_hparam, clean_token_array

Array = jax.Array
LEVELS = ("token", "sequence")


def _log_mismatch(old_logp: Array, rollout_logp: Array, mask: Array, level: str) -> Array:
  """log k [B, T]: per token, or the sequence sum Σ_t (log π_old − log μ) broadcast to the row."""
  check_choice("level", level, LEVELS)
  log_k = jnp.clip(old_logp - rollout_logp, -20.0, 20.0) * mask
  if level == "sequence":
    log_k = jnp.broadcast_to(jnp.sum(log_k, axis=-1, keepdims=True), log_k.shape)
  return log_k


def tis_weights(old_logp: Array, rollout_logp: Array, mask: Array, *, cap: float = 2.0,
                level: str = "token") -> Array:
  """Truncated importance sampling: w = min(k, C), k = π_old/μ (token or whole-sequence ratio).

  Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training" (2025).
  Example (C = 2): k = 0.3 / 1.5 / 2.5 / 6 → 0.3 / 1.5 / 2 / 2.
  """
  check_hparam("tis_cap", cap, strict=True)
  k = jnp.exp(_log_mismatch(old_logp, rollout_logp, mask, level))
  return jax.lax.stop_gradient(jnp.minimum(k, cap) * mask)


def mis_weights(old_logp: Array, rollout_logp: Array, mask: Array, *, low: float = 0.5, high: float = 2.0,
                level: str = "token") -> Array:
  """Masked importance sampling: w = k·1[low ≤ k ≤ high] (tokens or sequences outside are dropped).

  IcePop (Ring-1T, arXiv 2510.18855) uses [0.5, 5]; the default [0.5, 2] follows TRL's example.
  Example ([0.5, 2]): k = 0.3 / 1.5 / 2.5 / 6 → 0 / 1.5 / 0 / 0.
  """
  check_hparam("mis_low", low)
  if high < low:
    raise ValueError(f"mis_high must be >= mis_low, got [{low}, {high}].")
  k = jnp.exp(_log_mismatch(old_logp, rollout_logp, mask, level))
  return jax.lax.stop_gradient(jnp.where((k >= low) & (k <= high), k, 0.0) * mask)


def _corrected(base, weights, logp, old_logp, advantages, mask, ref_logp, hparams):
  base_fn = get(base)
  if base in ("tis", "mis"):
    raise ValueError("base must be a plain objective, not another correction.")
  if "token_weights" in hparams and hparams["token_weights"] is not None:
    weights = weights * jax.lax.stop_gradient(hparams.pop("token_weights"))
  loss, metrics = base_fn(logp, old_logp, advantages, mask, ref_logp=ref_logp, token_weights=weights, **hparams)
  m = (jnp.asarray(mask) > 0).astype(jnp.float32)
  metrics.update(is_weight_mean=masked_mean(weights, m), is_weight_zero_frac=masked_mean((weights == 0) * 1.0, m))
  return loss, metrics


@register
def tis(logp, old_logp, advantages, mask, *, rollout_logp, ref_logp=None, base="grpo", level="token", tis_cap=2.0,
        **hparams):
  """`base` objective with truncated-IS mismatch correction: ℓ_t ← sg(min(π_old/μ, C))·ℓ_t.

  `rollout_logp` [B, T] are the inference engine's log-probs μ; other keywords go to `base`.
  """
  m = (jnp.asarray(mask) > 0)
  roll = clean_token_array("rollout_logp", rollout_logp, jnp.asarray(mask).astype(jnp.float32))
  old = jnp.where(m, jnp.asarray(old_logp, jnp.float32), 0.0)
  w = tis_weights(old, roll, m.astype(jnp.float32), cap=tis_cap, level=level)
  return _corrected(base, w, logp, old_logp, advantages, mask, ref_logp, hparams)


@register
def mis(logp, old_logp, advantages, mask, *, rollout_logp, ref_logp=None, base="grpo", level="token", mis_low=0.5,
        mis_high=2.0, **hparams):
  """`base` objective with masked-IS mismatch correction: ℓ_t ← sg(k·1[low ≤ k ≤ high])·ℓ_t, k = π_old/μ.

  `level="sequence"` uses K_i = exp(Σ_t (log π_old − log μ)) and keeps or drops whole sequences.
  """
  m = (jnp.asarray(mask) > 0)
  roll = clean_token_array("rollout_logp", rollout_logp, jnp.asarray(mask).astype(jnp.float32))
  old = jnp.where(m, jnp.asarray(old_logp, jnp.float32), 0.0)
  w = mis_weights(old, roll, m.astype(jnp.float32), low=mis_low, high=mis_high, level=level)
  return _corrected(base, w, logp, old_logp, advantages, mask, ref_logp, hparams)


def with_correction(objective, correction: str = "tis", **correction_kwargs):
  """Composes a correction with any objective function (yours too): returns f(..., rollout_logp=...)."""
  check_choice("correction", correction, ("tis", "mis"))
  weight_fn = tis_weights if correction == "tis" else mis_weights

  def corrected(logp, old_logp, advantages, mask, *, rollout_logp, **kwargs):
    m = (jnp.asarray(mask) > 0).astype(jnp.float32)
    roll = clean_token_array("rollout_logp", rollout_logp, m)
    old = jnp.where(m > 0, jnp.asarray(old_logp, jnp.float32), 0.0)
    w = weight_fn(old, roll, m, **correction_kwargs)
    return objective(logp, old_logp, advantages, mask, token_weights=w, **kwargs)

  return corrected
