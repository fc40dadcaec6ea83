"""PPO-clip family with token-level ratios: GRPO, PPO dual-clip, Dr. GRPO, DAPO, NGRPO, DCPO, MinPRO.

All are recipes: token ratio → trust region → (optional weights) → aggregation (+ KL).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rl_jax.objectives import ratios, trust_regions
from rl_jax.objectives.core import check_dual_clip, policy_loss, register, start
from rl_jax.objectives.core import kernel_impl as _impl
from rl_jax.objectives.inputs import PolicyInputs

Array = jax.Array


def token_clip_terms(inp: PolicyInputs, *, eps_low, eps_high, dual_clip_c=None, use_kernel: bool = False):
  """Per-token PPO-clip loss (and dual clip) with token ratios: returns (ℓ, clipped, r).

  `use_kernel=True` computes ℓ and the clip indicator with the fused Pallas ratio/clip kernel
  (rl_jax.kernels.ratio_clip), which is exact to this jnp path.
  """
  log_ratio = ratios.token_log_ratio(inp.logp, inp.old_logp)
  ratio = jnp.exp(log_ratio)
  if use_kernel:
    from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
    per_token, clipped = ratio_clip_loss(inp.logp, inp.old_logp, inp.adv, inp.mask, mode="clip", eps_low=eps_low,
                                         eps_high=eps_high, dual_clip_c=dual_clip_c,
                                         impl=_impl(use_kernel))
    return per_token, clipped, ratio
  per_token, clipped = trust_regions.clipped_surrogate(ratio, inp.adv, eps_low=eps_low, eps_high=eps_high)
  if dual_clip_c is not None:
    per_token, clipped = trust_regions.dual_clip(per_token, inp.adv, clipped, dual_clip_c)
  return per_token, clipped, ratio


def _clip_objective(logp, old_logp, advantages, mask, ref_logp, *, eps_low, eps_high, dual_clip_c, beta,
                    kl_estimator, agg, max_len, token_weights, use_kernel):
  check_dual_clip(dual_clip_c)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  per_token, clipped, ratio = token_clip_terms(inp, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c,
                                               use_kernel=use_kernel)
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)


@register
def grpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2,
         dual_clip_c: Optional[float] = None, beta=0.04, kl_estimator="k3", agg="seq-mean-token-mean",
         max_len=None, token_weights=None, use_kernel=False):
  """GRPO: PPO-clip with group-relative advantages and a k3 KL penalty.

    J = (1/G) Σ_i (1/L_i) Σ_t [ min(r Â, clip(r, 1−ε_low, 1+ε_high) Â) − β k3 ],  r = π_θ/π_old.

  DeepSeekMath (Shao et al.), arXiv 2402.03300. Defaults follow the paper: β = 0.04, sequence-mean of
  token-means ("seq-mean-token-mean"); ε = 0.2 is the PPO convention (the paper states none).
  verl defaults to agg="token-mean" and β = 0.001: pass them to reproduce it. `dual_clip_c` enables
  dual clipping for Â < 0 (off by default).

  Args:
    logp, old_logp, mask: [B, T]; advantages: [B] or [B, T]; ref_logp: [B, T], required when β > 0.
  Returns:
    (loss, metrics): scalar loss to minimise and a dict of scalar metrics.
  """
  return _clip_objective(logp, old_logp, advantages, mask, ref_logp, eps_low=eps_low, eps_high=eps_high,
                         dual_clip_c=dual_clip_c, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
                         token_weights=token_weights, use_kernel=use_kernel)


@register
def ppo_dual_clip(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2, dual_clip_c=3.0,
                  beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None,
                  use_kernel=False):
  """Dual-clip PPO: PPO-clip plus ℓ ← min(ℓ, −c·Â) for Â < 0.

  Ye et al., "Mastering Complex Control in MOBA Games with Deep RL", arXiv 1912.09729. Defaults are
  verl's vanilla policy loss: ε = 0.2, c = 3, token-mean, no KL. Worked example (ε = 0.2, c = 3):
  r = 1.5, Â = +1 → −1.2; r = 1.5, Â = −1 → 1.5; r = 5, Â = −1 → 3; r = 0.5, Â = −1 → 0.8.
  """
  return _clip_objective(logp, old_logp, advantages, mask, ref_logp, eps_low=eps_low, eps_high=eps_high,
                         dual_clip_c=dual_clip_c, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
                         token_weights=token_weights, use_kernel=use_kernel)


@register
def dr_grpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2, beta=0.0,
            kl_estimator="k3", agg="seq-mean-token-sum-norm", max_len=3000, token_weights=None, use_kernel=False):
  """Dr. GRPO: PPO-clip summed over tokens and divided by a constant, not by |o_i|.

    loss = Σ_{i,t} m ℓ_{i,t} / (N_seq · L_const),  ℓ = −min(r Â, clip(r) Â),  Â = R − mean_G R (no std).

  "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv 2503.20783. Defaults from its
  official oat code: L_const = max_len = 3000, ε = 0.2, β = 0. The advantage side (no std division)
  is `rl_jax.advantages.dr_grpo`. verl's "seq-mean-token-sum-norm" matches when its
  loss_scale_factor is the constant L_const (its default is the padded micro-batch width).
  Example: two sequences with token-loss sums −6 and +3, L_const = 3000 → (−6 + 3)/(2·3000) = −5e-4.
  """
  return _clip_objective(logp, old_logp, advantages, mask, ref_logp, eps_low=eps_low, eps_high=eps_high,
                         dual_clip_c=None, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
                         token_weights=token_weights, use_kernel=use_kernel)


@register
def dapo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0,
         beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None, use_kernel=False):
  """DAPO: clip-higher (ε_high > ε_low) with token-level mean over the whole mini-batch.

    J = (1/Σ_i L_i) Σ_i Σ_t min(r Â, clip(r, 1−ε_low, 1+ε_high) Â).

  "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476. Defaults from its
  official verl recipe: ε_low = 0.2, ε_high = 0.28, dual clip c = 10, token-mean, no KL. Dynamic
  sampling (drop groups whose rewards all agree) and overlong shaping live outside the loss: fold a
  group-validity mask into `mask`.
  """
  return _clip_objective(logp, old_logp, advantages, mask, ref_logp, eps_low=eps_low, eps_high=eps_high,
                         dual_clip_c=dual_clip_c, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
                         token_weights=token_weights, use_kernel=use_kernel)


@register
def ngrpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.16, eps_high=0.24, beta=0.0,
          kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None, use_kernel=False):
  """NGRPO's asymmetric clip, clip(r, 1−ε_neg, 1+ε_pos), used with calibrated advantages.

  "NGRPO: Negative-enhanced Group Relative Policy Optimization", arXiv 2509.18851. The advantage
  calibration (a virtual max-reward sample per group) is `rl_jax.advantages.ngrpo`. Defaults from the
  official code: ε_low = 0.16, ε_high = 0.24, token-mean, no KL.
  """
  return _clip_objective(logp, old_logp, advantages, mask, ref_logp, eps_low=eps_low, eps_high=eps_high,
                         dual_clip_c=None, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
                         token_weights=token_weights, use_kernel=use_kernel)


@register
def dcpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0,
         beta=0.0, kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, token_weights=None):
  """DCPO: dynamic-adaptive clipping bounds from the old token probability, plus dual clip.

    lo(q) = ½ + ½ sqrt(max(1 − 4ε_low/q, 0)),  hi(q) = min(½ + ½ sqrt(1 + 4ε_high/q), max(c, 10)),  q = π_old(y_t)
    ℓ = max(−Â r, −Â clip(r, lo, hi));  Â < 0: ℓ = min(ℓ, −Â c).

  "DCPO: Dynamic Clipping Policy Optimization", arXiv 2509.02333. Defaults follow the official code
  (run_dcpo.sh): ε = (0.2, 0.28), c = 10; the paper's table uses ε = (0.16, 0.2) — pass those to
  reproduce it. The code's "only-token-mean" aggregation is a per-micro-batch token mean that equals the
  sequence mean of token means with one response per micro-batch, hence agg="seq-mean-token-mean".
  Smooth advantage standardisation is `rl_jax.advantages.dcpo`.
  """
  check_dual_clip(dual_clip_c)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  max_high = 10.0 if dual_clip_c is None else jnp.maximum(dual_clip_c, 10.0)
  lo, hi = trust_regions.dcpo_bounds(inp.old_logp, eps_low=eps_low, eps_high=eps_high, max_high=max_high)
  per_token, clipped = trust_regions.clip_bounds_loss(ratio, inp.adv, lo, hi)
  if dual_clip_c is not None:
    per_token, clipped = trust_regions.dual_clip(per_token, inp.adv, clipped, dual_clip_c)
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)


@register
def minpro(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2, include_current=False,
           cap_at_one=False, beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None):
  """MinPRO: PPO-clip weighted by the minimum token ratio of the preceding prefix.

    w_{i,t} = sg(min_{j<t} ρ_{i,j}) (1 for an empty prefix),  ℓ = −w · min(ρ Â, clip(ρ, 1−ε_l, 1+ε_h) Â).

  "A Step Back: Prefix Importance Ratio Stabilizes Policy Optimization", arXiv 2601.22718. No official
  code was available: this is a reconstruction from the paper's description. The open points are
  keywords: `include_current` (j ≤ t instead of j < t), `cap_at_one` (w ≤ 1); w is stop-gradient.
  """
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  per_token, clipped, ratio = token_clip_terms(inp, eps_low=eps_low, eps_high=eps_high)
  log_ratio = ratios.token_log_ratio(inp.logp, inp.old_logp)
  weight = jnp.exp(ratios.prefix_min_log_weight(log_ratio, inp.mask, include_current=include_current,
                                                cap_at_one=cap_at_one))
  return policy_loss(weight * per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights,
                     extra_metrics={"prefix_weight_mean": jnp.sum(weight * inp.mask) / jnp.maximum(inp.mask.sum(), 1)})
