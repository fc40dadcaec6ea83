"""Objectives that reshape the PPO gradient instead of (or besides) hard clipping: SAPO's soft gate,
CISPO's clipped IS weights, and the covariance-based Clip-Cov / KL-Cov."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives import ratios, trust_regions
from rl_jax.objectives.aggregation import masked_mean
from rl_jax.objectives.core import policy_loss, register, start
from rl_jax.objectives.core import kernel_impl as _impl
from rl_jax.objectives.inputs import check_choice, check_hparam

Array = jax.Array
sg = jax.lax.stop_gradient


@register
def sapo(logp, old_logp, advantages, mask, *, ref_logp=None, tau_pos=1.0, tau_neg=1.05, beta=0.0, kl_estimator="k3",
         agg="seq-mean-token-mean", max_len=None, token_weights=None, use_kernel=False):
  """SAPO: a temperature-controlled sigmoid gate replaces the hard clip.

    ℓ = −σ(τ(r − 1))·(4/τ)·Â,  τ = τ_pos if Â > 0 else τ_neg.

  "Soft Adaptive Policy Optimization" (Qwen), arXiv 2511.20347; no official code, defaults from the
  paper (τ_pos = 1, τ_neg = 1.05) and verl/TRL (sequence mean of token means). On-policy (r = 1) the
  gradient is REINFORCE's, while the loss value is −2Â/τ. As τ → ∞ the gate approaches a hard trust
  region: the gradient weight vanishes off r = 1.
  """
  check_hparam("tau_pos", tau_pos, strict=True)
  check_hparam("tau_neg", tau_neg, strict=True)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len)
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  if use_kernel:
    from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
    per_token, clipped = ratio_clip_loss(inp.logp, inp.old_logp, inp.adv, inp.mask, mode="sapo", tau_pos=tau_pos,
                                         tau_neg=tau_neg, impl=_impl(use_kernel))
  else:
    per_token, clipped = trust_regions.sapo_gate(ratio, inp.adv, tau_pos=tau_pos, tau_neg=tau_neg)
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)


@register
def cispo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=10.0, eps_high=0.2, cap_mode="relative",
          trust_mask=False, beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None,
          use_kernel=False):
  """CISPO: clip the importance-sampling weight, never the token's gradient.

    J = (1/Σ L_i) Σ_{i,t} sg(r̂_{i,t}) Â_{i,t} log π_θ(y_t),  r̂ = clip(r, 1−ε_low, 1+ε_high).

  MiniMax-M1, arXiv 2506.13585; no official code. Defaults follow verl (ε_low = 10, ε_high = 0.2,
  token-mean). `cap_mode="absolute"` is TRL's reading (r̂ = min(r, ε_high), ε_high an absolute cap,
  e.g. 5.0). `trust_mask=True` adds the paper's general mask M (drop Â>0, r>1+ε_h and Â<0, r<1−ε_l).
  Example (verl bounds): r = 0.5 / 1.1 / 1.5 → weights 0.5 / 1.1 / 1.2.
  """
  check_choice("cap_mode", cap_mode, ("relative", "absolute"))
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  weight = trust_regions.cispo_weight(ratio, eps_low=eps_low, eps_high=eps_high, cap_mode=cap_mode)
  if use_kernel and cap_mode == "relative":
    from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
    per_token, clipped = ratio_clip_loss(inp.logp, inp.old_logp, inp.adv, inp.mask, mode="cispo", eps_low=eps_low,
                                         eps_high=eps_high, impl=_impl(use_kernel))
  else:
    per_token = -weight * inp.adv * inp.logp
    clipped = (weight != ratio).astype(jnp.float32)
  if trust_mask:
    keep = ~(((inp.adv > 0) & (ratio > 1.0 + eps_high)) | ((inp.adv < 0) & (ratio < 1.0 - eps_low)))
    per_token = per_token * keep
    clipped = jnp.maximum(clipped, (~keep).astype(jnp.float32))
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)


def token_covariance(adv: Array, logp: Array, mask: Array) -> Array:
  """Cov_t = (Â_t − mean_valid Â)·(sg(log π_t) − mean_valid sg(log π))  [B, T], 0 on masked tokens.

  The per-token centred cross product that drives entropy collapse ("The Entropy Mechanism of RL for
  Reasoning Language Models", arXiv 2505.22617). Computed over the batch passed in.
  """
  lp = sg(logp)
  return (adv - masked_mean(adv, mask)) * (lp - masked_mean(lp, mask)) * mask


@register
def clip_cov(logp, old_logp, advantages, mask, *, rng, ref_logp=None, eps_low=1.0, eps_high=1.0,
             clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0, beta=0.0, kl_estimator="k3", agg="token-mean",
             max_len=None, token_weights=None):
  """Clip-Cov: drop the gradient of a few random high-covariance tokens.

  Candidates: valid, not PPO-clipped, clip_cov_lb < Cov_t < clip_cov_ub. n = max(⌊ratio·N_valid⌋, 1)
  of them, drawn uniformly without replacement with `rng`, get loss 0; the rest use
  ℓ = max(−Â r, −Â clip(r, 1−ε_l, 1+ε_h)). arXiv 2505.22617; defaults from the official scripts
  (ratio 2e-4, bounds (1, 5), ε = 1 so r ∈ [0, 2], token-mean, no KL).
  """
  if rng is None:
    raise ValueError("clip_cov needs rng (a jax.random key) to draw the tokens it detaches.")
  for name, value in (("clip_cov_ratio", clip_cov_ratio),):
    check_hparam(name, value)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  per_token, clipped = trust_regions.clipped_surrogate(ratio, inp.adv, eps_low=eps_low, eps_high=eps_high)
  cov = token_covariance(inp.adv, inp.logp, inp.mask)
  candidate = (inp.mask > 0) & (clipped == 0) & (cov > clip_cov_lb) & (cov < clip_cov_ub)
  n = jnp.maximum(jnp.floor(clip_cov_ratio * jnp.sum(inp.mask)), 1.0)
  score = jnp.where(candidate, jax.random.uniform(rng, cov.shape), 2.0).reshape(-1)
  rank = jnp.argsort(jnp.argsort(score)).reshape(cov.shape)
  detached = candidate & (rank < n)
  per_token = jnp.where(detached, 0.0, per_token)
  return policy_loss(per_token, inp, ratio=ratio, clipped=jnp.maximum(clipped, detached.astype(jnp.float32)), agg=agg,
                     max_len=max_len, beta=beta, kl_estimator=kl_estimator, token_weights=token_weights,
                     extra_metrics={"cov_detached_frac": masked_mean(detached.astype(jnp.float32), inp.mask)})


@register
def kl_cov(logp, old_logp, advantages, mask, *, ref_logp=None, kl_cov_frac=2e-3, kl_cov_coef=1.0, beta=0.0,
           kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None):
  """KL-Cov: a |log-ratio| penalty on the top-k covariance tokens, plain policy gradient elsewhere.

    ℓ = −Â r + coef·|Δ| on the k = max(1, ⌊N_valid·frac⌋) tokens with the largest Cov_t; ℓ = −Â r otherwise.

  arXiv 2505.22617. Defaults follow the official code: k_percent = 0.2 meaning 0.2% (frac = 2e-3,
  7B scripts; 2e-4 for 32B) and coef = 1. verl reads the ratio as a direct fraction (2e-4) and uses
  coef 0.1: pass those to match it. No clipping at all. Ties in the top-k go to the lower flat index.
  """
  check_hparam("kl_cov_frac", kl_cov_frac)
  check_hparam("kl_cov_coef", kl_cov_coef)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len)
  log_ratio = ratios.token_log_ratio(inp.logp, inp.old_logp)
  ratio = jnp.exp(log_ratio)
  cov = token_covariance(inp.adv, inp.logp, inp.mask)
  k = jnp.maximum(jnp.floor(kl_cov_frac * jnp.sum(inp.mask)), 1.0)
  score = jnp.where(inp.mask > 0, cov, -jnp.inf).reshape(-1)
  order = jnp.argsort(-score, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size)).reshape(cov.shape)
  selected = (inp.mask > 0) & (rank < k)
  per_token = -inp.adv * ratio + jnp.where(selected, kl_cov_coef * jnp.abs(log_ratio), 0.0)
  return policy_loss(per_token, inp, ratio=ratio, clipped=jnp.zeros_like(ratio), agg=agg, max_len=max_len,
                     beta=beta, kl_estimator=kl_estimator, token_weights=token_weights,
                     extra_metrics={"kl_cov_frac": masked_mean(selected.astype(jnp.float32), inp.mask)})
