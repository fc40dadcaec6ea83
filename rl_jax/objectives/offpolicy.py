"""Off-policy REINFORCE variants without a clipped surrogate: TOPR, MiniRL and OPMD / AsymRE."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives import ratios
from rl_jax.objectives.core import optional_token_array, policy_loss, register, start
from rl_jax.objectives.inputs import check_hparam

Array = jax.Array
sg = jax.lax.stop_gradient


@register
def topr(logp, old_logp, advantages, mask, *, ref_logp=None, beta=0.0, kl_estimator="k3", agg="seq-mean-token-sum",
         max_len=None, token_weights=None):
  """TOPR: REINFORCE on positive samples, truncated IS on negative ones.

    ℓ_i = −sg(w_i)·R_i·Σ_t m log π_θ(y_t),  w_i = 1 if R_i ≥ 0 else clip(ρ_i, 0, 1),  ρ_i = exp(Σ_t m Δ_t).

  "Tapered Off-Policy REINFORCE", arXiv 2503.14286 (paper only; no KL). `advantages` [B] are the
  (baseline-shifted) rewards R_i; ρ_i is the full sequence ratio (a product, not a geometric mean)
  against the behaviour policy. Loss VALUE depends on log π itself (REINFORCE form); only its gradient
  is meaningful. Example: Σ Δ = −0.2 on a negative sample → w = 0.8187.
  """
  if jnp.ndim(advantages) != 1:
    raise ValueError(f"topr needs sequence-level rewards/advantages of shape [B], got {tuple(jnp.shape(advantages))}.")
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len)
  log_ratio = ratios.token_log_ratio(inp.logp, inp.old_logp)
  seq_ratio = jnp.exp(jnp.minimum(jnp.sum(log_ratio * inp.mask, axis=-1), 20.0))            # [B]
  weight = sg(jnp.where(inp.seq_adv >= 0, 1.0, jnp.clip(seq_ratio, 0.0, 1.0)))
  per_token = -(weight * inp.seq_adv)[:, None] * inp.logp
  clipped = jnp.broadcast_to(((inp.seq_adv < 0) & (seq_ratio > 1.0))[:, None], inp.mask.shape).astype(jnp.float32)
  return policy_loss(per_token, inp, ratio=jnp.broadcast_to(seq_ratio[:, None], inp.mask.shape), clipped=clipped,
                     agg=agg, max_len=max_len, beta=beta, kl_estimator=kl_estimator, token_weights=token_weights)


@register
def minirl(logp, old_logp, advantages, mask, *, rollout_logp=None, ref_logp=None, eps_low=0.2, eps_high=0.2,
           beta=0.0, kl_estimator="k3", agg="seq-mean-token-sum", max_len=None, token_weights=None):
  """MiniRL: token-level surrogate with mismatch weight and a trust-region MASK (not a value clip).

    ℓ_t = −M_t · sg(π_old/μ) · r_t · Â,  M_t = 0 iff (Â > 0, r > 1+ε_h) or (Â < 0, r < 1−ε_l).

  "Stabilizing Reinforcement Learning with LLMs: Formulation and Practices" (Qwen), arXiv 2512.01374.
  [UNVERIFIED reconstruction: constants and normaliser not checked against the PDF.] The paper argues
  against length normalisation, hence agg="seq-mean-token-sum" by default; Â is R − mean_G R
  (`rl_jax.advantages.dr_grpo`). Without `rollout_logp` the mismatch weight is 1.
  """
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  mismatch = jnp.ones_like(ratio)
  roll = optional_token_array("rollout_logp", rollout_logp, inp, required=False, method="minirl")
  if roll is not None:
    mismatch = sg(jnp.exp(ratios.token_log_ratio(inp.old_logp, roll)))
  r = sg(ratio)
  dropped = ((inp.adv > 0) & (r > 1.0 + eps_high)) | ((inp.adv < 0) & (r < 1.0 - eps_low))
  per_token = jnp.where(dropped, 0.0, -mismatch * ratio * inp.adv)
  return policy_loss(per_token, inp, ratio=ratio, clipped=dropped.astype(jnp.float32), agg=agg, max_len=max_len,
                     beta=beta, kl_estimator=kl_estimator, token_weights=token_weights)


@register
def opmd(logp, old_logp, advantages, mask, *, ref_logp=None, tau=1.0, beta=0.0, kl_estimator="k3", agg="token-mean",
         max_len=None, token_weights=None):
  """OPMD / AsymRE policy loss: REINFORCE on log π_θ, scaled by 1/(1 + τ), without any importance ratio.

    loss = agg(−Â_{i,t} log π_θ(y_t)) / (1 + τ).

  "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm", arXiv 2509.24203, which reads online
  policy mirror descent (Kimi k1.5, arXiv 2501.12599) and AsymRE (arXiv 2506.20520) as regularised
  REINFORCE. Defaults from the official Trinity-RFT code: τ = 1, token-mean, no KL; π_old is not used
  (the regularisation lives in the 1/(1+τ) step and in the advantage's baseline). Advantages:
  `rl_jax.advantages.opmd` (OPMD) or `rl_jax.advantages.asymre` (AsymRE). The loss VALUE depends on
  log π itself (REINFORCE form); only its gradient is meaningful.
  Example: Â = 1 on one token, τ = 1 → gradient −0.5 w.r.t. log π.
  """
  check_hparam("tau", tau)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len)
  per_token = -inp.adv * inp.logp / (1.0 + tau)
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  return policy_loss(per_token, inp, ratio=ratio, clipped=jnp.zeros_like(ratio), agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)
