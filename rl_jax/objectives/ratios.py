"""Importance ratios at token, sequence, segment (sentence / rank item) and prefix level.

All return LOG ratios so callers can clamp, mix or exponentiate them. Δ_{i,t} = logp − old_logp,
clamped to [−20, 20] before any exp (verl's guard). Masked tokens must already be zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
sg = jax.lax.stop_gradient

LOG_RATIO_CLAMP = 20.0
SEQ_LOG_RATIO_MAX = 10.0


def token_log_ratio(logp: Array, old_logp: Array) -> Array:
  """Δ_{i,t} = clamp(log π_θ(y_t) − log π_old(y_t), −20, 20)  [B, T]  (PPO, arXiv 1707.06347)."""
  return jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def sequence_log_ratio(log_ratio: Array, mask: Array, *, max_log: float = SEQ_LOG_RATIO_MAX) -> Array:
  """GSPO's length-normalised sequence ratio, log s_i = (1/L_i) Σ_t m Δ_{i,t}, capped at `max_log`.

  s_i = (π_θ(y_i)/π_old(y_i))^{1/L_i} (GSPO, arXiv 2507.18071). The gradient reaches every token of
  the sequence. L_i = 0 gives log s = 0. Returns [B].
  """
  lengths = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
  return jnp.minimum(jnp.sum(log_ratio * mask, axis=-1) / lengths, max_log)


def sequence_token_log_ratio(logp: Array, seq_log_ratio: Array) -> Array:
  """GSPO-token: log s_{i,t} = sg(log s_i) + log π_θ(y_t) − sg(log π_θ(y_t))  [B, T].

  Same value as s_i on every token; only the token's own log-prob carries gradient, which makes
  per-token advantages possible (GSPO, arXiv 2507.18071, §4.3).
  """
  return sg(seq_log_ratio)[:, None] + logp - sg(logp)


def segment_mean(x: Array, mask: Array, segment_ids: Array) -> Array:
  """Mean of x over the valid tokens of each (row, segment), broadcast back to tokens  [B, T].

  `segment_ids` int [B, T] in [0, T): tokens of a row with the same id form one segment (ids are
  row-local). Masked tokens take no part and get 0.
  """
  b, t = x.shape
  flat = (jnp.arange(b, dtype=jnp.int32)[:, None] * t + jnp.clip(segment_ids.astype(jnp.int32), 0, t - 1)).reshape(-1)
  sums = jax.ops.segment_sum((x * mask).reshape(-1), flat, num_segments=b * t)
  counts = jax.ops.segment_sum(mask.reshape(-1), flat, num_segments=b * t)
  means = sums / jnp.maximum(counts, 1.0)
  return means[flat].reshape(b, t) * mask


def segment_log_ratio(log_ratio: Array, mask: Array, segment_ids: Array) -> Array:
  """Segment-level log ratio: mean_{t ∈ S_k} Δ_t broadcast to the segment's tokens  [B, T].

  The geometric mean of the token ratios inside a segment: sub-sentences in SSPO (arXiv 2511.04256),
  recommended items in Rank-GRPO (arXiv 2510.20150). Gradient flows through all segment tokens.
  """
  return segment_mean(log_ratio, mask, segment_ids)


def sentence_segment_ids(token_ids: Array, mask: Array, delimiter_ids) -> Array:
  """Segment ids [B, T] that split each row after every delimiter token.

  id_t = number of delimiter tokens strictly before t in the row, so a delimiter (". , ; ! ? \\n"
  token ids, say) closes the segment it ends. Ids stay in [0, T).
  """
  delimiters = jnp.asarray(delimiter_ids, dtype=token_ids.dtype).reshape(-1)
  is_delim = jnp.any(token_ids[..., None] == delimiters.reshape((1,) * token_ids.ndim + (-1,)), axis=-1) & (mask > 0)
  ends = jnp.cumsum(is_delim.astype(jnp.int32), axis=-1)
  return ends - is_delim.astype(jnp.int32)


def prefix_min_log_weight(log_ratio: Array, mask: Array, *, include_current: bool = False,
                          cap_at_one: bool = False) -> Array:
  """MinPRO weight in log space: log w_{i,t} = sg(min_{j<t, m_j=1} Δ_{i,j}), 0 for an empty prefix.

  A non-cumulative surrogate of the prefix ratio Π_{j≤t} ρ_j ("A Step Back: Prefix Importance Ratio
  Stabilizes Policy Optimization", arXiv 2601.22718). `include_current` uses j ≤ t; `cap_at_one`
  clips w at 1. Example: ρ = [1.2, 0.5, 1.1, 0.9] → w = [1, 1.2, 0.5, 0.5].
  """
  masked = jnp.where(mask > 0, sg(log_ratio), jnp.inf)
  running = jax.lax.cummin(masked, axis=masked.ndim - 1)
  if not include_current:
    running = jnp.concatenate([jnp.full_like(running[:, :1], jnp.inf), running[:, :-1]], axis=-1)
  log_w = jnp.where(jnp.isfinite(running), running, 0.0)
  if cap_at_one:
    log_w = jnp.minimum(log_w, 0.0)
  return log_w * mask
