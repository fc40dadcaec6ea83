"""DisCO: a discriminative objective (scores of correct vs incorrect answers in a group) with a KL constraint
enforced by a squared-hinge-style penalty instead of clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives import ratios
from rl_jax.objectives.aggregation import masked_mean
from rl_jax.objectives.core import policy_loss, register, start
from rl_jax.objectives.inputs import check_choice, check_hparam, is_concrete

Array = jax.Array
sg = jax.lax.stop_gradient


def sequence_scores(inp, score: str) -> Array:
  """DisCO scoring function s_i [B]: "logL" = (1/L_i) Σ_t log π_θ(y_t); "Lratio" = (1/L_i) Σ_t π_θ/π_old."""
  check_choice("score", score, ("logL", "Lratio"))
  x = inp.logp if score == "logL" else jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  return jnp.sum(x * inp.mask, axis=-1) / jnp.maximum(jnp.sum(inp.mask, axis=-1), 1.0)


def discriminative_gap(scores: Array, pos: Array, neg: Array, tau) -> tuple[Array, Array]:
  """Per-group gap [P] and validity [P] from scores, positive and negative masks [P, G].

    gap = mean_{pos} s − τ·log mean_{neg} exp(s/τ)   (tau=None: mean_{pos} s − mean_{neg} s, DisCO-b).

  A group takes part only when it holds at least one positive and one negative answer.
  """
  n_pos, n_neg = jnp.sum(pos, axis=1), jnp.sum(neg, axis=1)
  valid = (n_pos > 0) & (n_neg > 0)
  pos_mean = jnp.sum(jnp.where(pos, scores, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  if tau is None:
    neg_term = jnp.sum(jnp.where(neg, scores, 0.0), axis=1) / jnp.maximum(n_neg, 1)
  else:
    z = jnp.where(neg, scores / tau, -jnp.inf)
    top = sg(jnp.where(n_neg > 0, jnp.max(z, axis=1), 0.0))
    total = jnp.sum(jnp.where(neg, jnp.exp(jnp.where(neg, scores / tau - top[:, None], 0.0)), 0.0), axis=1)
    neg_term = tau * (jnp.log(jnp.where(n_neg > 0, total, 1.0)) + top - jnp.log(jnp.maximum(n_neg, 1)))
  return jnp.where(valid, pos_mean - neg_term, 0.0), valid


def _constraint_kl(inp, kl_type: str) -> Array:
  """Token-mean estimate of KL(π_old ‖ π_θ): "k1" = mean(log π_old − log π_θ); "k3" = mean(r − 1 − log r)."""
  check_choice("kl_type", kl_type, ("k1", "k3"))
  log_r = ratios.token_log_ratio(inp.logp, inp.old_logp)
  per_token = -log_r if kl_type == "k1" else jnp.exp(log_r) - 1.0 - log_r
  return masked_mean(per_token, inp.mask)


@register
def disco(logp, old_logp, advantages, mask, *, group_size, ref_logp=None, score="logL", tau=10.0, delta=1e-4,
          penalty=1e3, kl_type="k1", beta=0.0, kl_estimator="k3"):
  """DisCO: maximise a group's positive-vs-negative score gap under a KL(π_old ‖ π_θ) ≤ δ constraint.

    J = (1/N_q) Σ_{q valid} [ mean_{i∈pos_q} s_i − τ log mean_{j∈neg_q} exp(s_j/τ) ],
    loss = −J + sg(max(β_c (KL − δ), 0)) · KL,   KL = token-mean(log π_old − log π_θ).

  "DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization", arXiv 2505.12366.
  Defaults from the official code's scripts: score "logL" (also "Lratio"), τ = 10, δ = 1e-4, β_c =
  `penalty` = 1e3, kl_type "k1"; `tau=None` is DisCO-b (mean of negative scores). Rows are grouped
  contiguously by `group_size`; an answer is positive when its advantage is > 0 and negative when < 0
  (for binary rewards, any group-centred advantage marks exactly the code's reward == 1 / == 0); a group
  needs both to take part. N_q counts the groups with at least one valid token. The code's log-mean-exp
  is a surrogate with the same gradient but value 1; this returns the log-mean-exp itself. `beta` adds a
  KL-to-reference term (off in the paper). clip_frac reports whether KL > δ.
  """
  check_hparam("penalty", penalty)
  check_hparam("delta", delta)
  if tau is not None:
    check_hparam("tau", tau, strict=True)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg="token-mean")
  b = inp.mask.shape[0]
  if not is_concrete(group_size) or group_size < 1 or b % group_size:
    raise ValueError(f"disco: group_size must be a positive int dividing the batch {b}, got {group_size}.")
  lengths = jnp.sum(inp.mask, axis=-1)
  row_adv = inp.seq_adv if inp.seq_adv is not None else jnp.sum(inp.adv, -1) / jnp.maximum(lengths, 1.0)
  groups = (b // group_size, group_size)
  s = sequence_scores(inp, score).reshape(groups)
  gap, valid = discriminative_gap(s, (row_adv > 0).reshape(groups), (row_adv < 0).reshape(groups), tau)
  n_q = jnp.maximum(jnp.sum(jnp.any((lengths > 0).reshape(groups), axis=1)), 1).astype(jnp.float32)
  pg = -jnp.sum(gap) / n_q
  kl = _constraint_kl(inp, kl_type)
  constraint = sg(jnp.maximum(penalty * (kl - delta), 0.0)) * kl
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  violated = jnp.broadcast_to((kl > delta).astype(jnp.float32), inp.mask.shape)
  _, metrics = policy_loss(jnp.zeros_like(ratio), inp, ratio=ratio, clipped=violated, agg="token-mean", beta=beta,
                           kl_estimator=kl_estimator,
                           extra_metrics={"constraint_kl": kl, "valid_group_frac": jnp.sum(valid) / n_q})
  loss = pg + constraint + (beta * metrics["kl"] if "kl" in metrics else 0.0)
  metrics.update(pg_loss=pg, loss=loss)
  return loss, metrics
