"""GTPO: conflict-token protection and entropy filtering on top of on-policy policy gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives import ratios
from rl_jax.objectives.core import optional_token_array, policy_loss, register, start
from rl_jax.objectives.inputs import check_hparam, is_concrete

Array = jax.Array
sg = jax.lax.stop_gradient


def _raw_conflicts(tokens: Array, valid: Array, pos: Array, neg: Array) -> Array:
  """[P, G, T]: token of row i at position t also appears at t in a valid positive AND a negative row."""
  same = (tokens[:, :, None, :] == tokens[:, None, :, :]) & valid[:, None, :, :]        # [P, G(i), G(j), T]
  in_pos = jnp.any(same & pos[:, None, :, None], axis=2)
  in_neg = jnp.any(same & neg[:, None, :, None], axis=2)
  return in_pos & in_neg & valid


def _leading_run(x: Array) -> Array:
  """Maximal leading run of True along the last axis (a cumulative product)."""
  return jnp.cumprod(x.astype(jnp.int32), axis=-1) > 0


def _right_align(x: Array, lengths: Array) -> Array:
  """x[..., L−1−p] at position p (p < L), i.e. positions counted from each row's last valid token."""
  t = x.shape[-1]
  steps = jnp.arange(t).reshape((1,) * lengths.ndim + (t,))
  index = jnp.clip(lengths[..., None] - 1 - steps, 0, t - 1)
  return jnp.take_along_axis(x, index, axis=-1)


def gtpo_conflict_weights(token_ids: Array, mask: Array, advantages: Array, *, group_size: int,
                          conflict_weight: float = 2.0) -> tuple[Array, Array]:
  """GTPO conflict-token weights δ [B, T] and per-row conflict counts n_conf [B].

  Rows are grouped contiguously (B = P·G, G = group_size); responses are right-padded. A token
  (position t, id v) is a raw conflict when v appears at t in at least one positive-advantage and one
  negative-advantage response of the group (responses with Â = 0 take no part). The forward region is
  the leading run of raw conflicts from t = 0 (shared prefix); the backward region is the same test on
  positions counted from each response's last valid token (shared suffix). In a region, a positive
  response's token gets `conflict_weight` and a negative one's 0 (others 1); δ = δ_fwd·δ_bwd and
  n_conf = max(1, |fwd ∪ bwd|). Responses with Â = 0 have no conflict region (δ = 1, n_conf = 1). ("GTPO: Stabilizing GRPO via Gradient and Entropy Control",
  arXiv 2508.03772.) Example: pos [a b c d], neg [a b x d] → δ_pos = [2,2,1,2], δ_neg = [0,0,1,0], n_conf = 3.
  """
  b, t = token_ids.shape
  if not is_concrete(group_size) or group_size < 1 or b % group_size:
    raise ValueError(f"group_size must be a positive int dividing the batch {b}, got {group_size}.")
  if jnp.shape(advantages) != (b,):
    raise ValueError(f"gtpo needs sequence-level advantages of shape ({b},), got {tuple(jnp.shape(advantages))}.")
  p, g = b // group_size, group_size
  valid = (mask > 0).reshape(p, g, t)
  tokens = jnp.where(valid, token_ids.reshape(p, g, t), -1)
  adv = advantages.reshape(p, g)
  pos, neg = adv > 0, adv < 0
  takes_part = (pos | neg)[..., None]                                                    # [P, G, 1]
  forward = _leading_run(_raw_conflicts(tokens, valid, pos, neg)) & takes_part
  lengths = jnp.sum(valid, axis=-1)
  r_valid = jnp.arange(t)[None, None, :] < lengths[..., None]
  backward_aligned = _leading_run(_raw_conflicts(_right_align(tokens, lengths), r_valid, pos, neg))
  backward = _right_align(backward_aligned, lengths) & valid & takes_part
  region_weight = jnp.where(pos, conflict_weight, jnp.where(neg, 0.0, 1.0))[..., None]     # [P, G, 1]
  delta = jnp.where(forward, region_weight, 1.0) * jnp.where(backward, region_weight, 1.0)
  n_conf = jnp.maximum(jnp.sum(forward | backward, axis=-1), 1)
  return delta.reshape(b, t) * valid.reshape(b, t), n_conf.reshape(b).astype(jnp.float32)


def entropy_filter(advantages: Array, mean_entropy: Array, *, threshold: float, scale: float) -> Array:
  """GTPO's entropy rule: Â ← 0 if mean entropy H̄_i > threshold, else Â − scale·H̄_i."""
  return jnp.where(mean_entropy > threshold, 0.0, advantages - scale * mean_entropy)


@register
def gtpo(logp, old_logp, advantages, mask, *, token_ids, entropy, group_size, ref_logp=None, ent_threshold=0.7,
         ent_scale=0.1, conflict_weight=2.0, beta=0.0, kl_estimator="k3"):
  """GTPO: on-policy policy gradient with conflict-token weights and an entropy filter, summed over completions.

    Â'_i = 0 if H̄_i > τ_H else Â_i − s·H̄_i,
    loss = Σ_i −(1/L_i) Σ_t exp(log π_t − sg(log π_t)) · Â'_i · δ_{i,t} / n_conf_i.

  arXiv 2508.03772; defaults from the official code (τ_H = 0.7, s = 0.1, W = 2). `advantages` [B] are
  the pre-shaping Â = R − mean_G R (`rl_jax.advantages.dr_grpo`): conflicts use their sign. The value
  is on-policy (no ratio to π_old, no clip) and the total is a SUM over completions, as in the code.
  `token_ids` int [B, T], `entropy` [B, T] (mean-entropy source), `group_size` G (rows contiguous).
  """
  check_hparam("conflict_weight", conflict_weight)
  agg = "seq-mean-token-mean"
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg)
  if inp.seq_adv is None:
    raise ValueError(f"gtpo needs sequence-level advantages of shape [B], got {tuple(jnp.shape(advantages))}.")
  tokens = optional_token_array("token_ids", token_ids, inp, required=True, method="gtpo", dtype=jnp.int32)
  h = optional_token_array("entropy", entropy, inp, required=True, method="gtpo")
  delta, n_conf = gtpo_conflict_weights(tokens, inp.mask, inp.seq_adv, group_size=group_size,
                                        conflict_weight=conflict_weight)
  lengths = jnp.sum(inp.mask, axis=-1)
  mean_h = sg(jnp.sum(h, axis=-1) / jnp.maximum(lengths, 1.0))
  shaped = entropy_filter(inp.seq_adv, mean_h, threshold=ent_threshold, scale=ent_scale) * (lengths > 0)
  unit = jnp.exp(inp.logp - sg(inp.logp))
  per_token = -unit * shaped[:, None] * sg(delta) / (n_conf * jnp.maximum(lengths, 1.0))[:, None]
  pg = jnp.sum(per_token * inp.mask)
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  _, metrics = policy_loss(per_token, inp, ratio=ratio, clipped=jnp.zeros_like(ratio), agg=agg, beta=beta,
                           kl_estimator=kl_estimator,
                           extra_metrics={"filtered_frac": jnp.mean((mean_h > ent_threshold) & (lengths > 0))})
  loss = pg + (beta * metrics["kl"] if "kl" in metrics else 0.0)
  metrics.update(pg_loss=pg, loss=loss)
  return loss, metrics
