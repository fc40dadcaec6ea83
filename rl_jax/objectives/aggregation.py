"""Loss aggregation: how per-token losses become one scalar.

For GRPO-family methods the reduction is a research variable (DAPO's token-mean vs GRPO's
sequence mean vs Dr.GRPO's constant normaliser), so objectives return per-token values and
aggregate them here. Every ratio of sums divides by max(denominator, 1): an all-masked batch
gives loss 0 and gradient 0, and rows with no valid token are left out of sequence means.
Sums run over the whole (global) batch, so under sharding the denominators are global.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rl_jax.objectives.inputs import check_choice, check_hparam

Array = jax.Array

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _num_seqs(mask: Array) -> Array:
  """N_seq = number of rows with at least one valid token (at least 1)."""
  return jnp.maximum(jnp.sum(jnp.sum(mask, axis=-1) > 0), 1).astype(jnp.float32)


def token_mean(per_token: Array, mask: Array) -> Array:
  """Σ_{i,t} m ℓ / max(1, Σ_{i,t} m)   (DAPO, arXiv 2503.14476; verl "token-mean")."""
  return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def seq_mean_token_mean(per_token: Array, mask: Array) -> Array:
  """(1/N_seq) Σ_i (Σ_t m ℓ / L_i)   (GRPO as in DeepSeekMath, arXiv 2402.03300)."""
  lengths = jnp.sum(mask, axis=-1)
  per_seq = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(lengths, 1.0)
  return jnp.sum(per_seq) / _num_seqs(mask)


def seq_mean_token_sum(per_token: Array, mask: Array) -> Array:
  """(1/N_seq) Σ_i Σ_t m ℓ."""
  return jnp.sum(per_token * mask) / _num_seqs(mask)


def seq_mean_token_sum_norm(per_token: Array, mask: Array, max_len: float) -> Array:
  """Σ_{i,t} m ℓ / (N_seq · L_const)   (Dr. GRPO, arXiv 2503.20783, as in its oat code).

  verl 0.9.1's mode of the same name also divides by the number of non-empty sequences, but by its
  `loss_scale_factor`, which defaults to the micro-batch's padded width rather than a constant; with a
  constant factor it equals this (tests/test_parity_verl.py).
  """
  return jnp.sum(per_token * mask) / (_num_seqs(mask) * max_len)


def aggregate(per_token: Array, mask: Array, agg: str, *, max_len: Optional[float] = None) -> Array:
  """Reduces per-token losses [B, T] to a scalar with the named mode (see AGG_MODES)."""
  check_choice("aggregation mode (agg)", agg, AGG_MODES)
  if agg == "token-mean":
    return token_mean(per_token, mask)
  if agg == "seq-mean-token-mean":
    return seq_mean_token_mean(per_token, mask)
  if agg == "seq-mean-token-sum":
    return seq_mean_token_sum(per_token, mask)
  if max_len is None:
    raise ValueError("agg='seq-mean-token-sum-norm' needs max_len (the constant normaliser L_const).")
  check_hparam("max_len", max_len, strict=True)
  return seq_mean_token_sum_norm(per_token, mask, max_len)


def masked_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_max(x: Array, mask: Array) -> Array:
  """Max over valid entries; 0 when nothing is valid (also for an empty batch, B = 0 or T = 0)."""
  if x.size == 0:
    return jnp.zeros((), x.dtype)
  top = jnp.max(jnp.where(mask > 0, x, -jnp.inf))
  return jnp.where(jnp.isfinite(top), top, 0.0)
