"""HAPO: token-entropy-adaptive clipping and advantage redistribution."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives import ratios, trust_regions
from rl_jax.objectives.core import check_dual_clip, optional_token_array, policy_loss, register, start
from rl_jax.objectives.inputs import check_hparam

Array = jax.Array
sg = jax.lax.stop_gradient


def normalized_entropy(entropy: Array, mask: Array, *, pivot: float = 0.8, reproduce_code_sign: bool = True) -> Array:
  """HAPO's normalised token entropy ĥ ∈ [−1, 1] (stop-gradient)  [B, T].

    e = log(max(H, 1e-8)),  q = quantile_pivot(e over valid tokens, "nearest"),
    h = (e − q)/sqrt(mean_valid (e − q)²),  ĥ = h/max(h) for h > 0 and h/|min(h)| for h ≤ 0.

  arXiv 2509.16591. The official code divides the negative side by min(h) itself (a negative number),
  which makes ĥ ≥ 0 for below-pivot tokens: `reproduce_code_sign=True` (default, official behaviour)
  keeps that; False gives the paper's signed ĥ.
  """
  valid = mask > 0
  e = jnp.log(jnp.maximum(sg(entropy), 1e-8))
  n = jnp.sum(valid)
  sorted_e = jnp.sort(jnp.where(valid, e, jnp.inf).reshape(-1))
  index = jnp.clip(jnp.round(pivot * (n - 1)).astype(jnp.int32), 0, sorted_e.size - 1)
  q = sorted_e[index]
  centred = jnp.where(valid, e - q, 0.0)
  scale = jnp.sqrt(jnp.sum(jnp.square(centred)) / jnp.maximum(n, 1))
  h = jnp.where(scale > 0, centred / jnp.where(scale > 0, scale, 1.0), 0.0)
  pos_max = jnp.max(jnp.where(valid & (h > 0), h, 0.0))
  neg_min = jnp.min(jnp.where(valid & (h < 0), h, 0.0))
  neg_scale = neg_min if reproduce_code_sign else jnp.abs(neg_min)
  safe = lambda d: jnp.where(d != 0, d, 1.0)
  h_hat = jnp.where(h > 0, h / safe(pos_max), jnp.where(h < 0, h / safe(neg_scale), 0.0))
  return sg(h_hat * valid)


def entropy_temperature_stats(entropy: Array, mask: Array, *, pivot: float = 0.8) -> Array:
  """(m, s, k₊, k₋) [4] for the sampler's adaptive temperature (`rl_jax.sampling.entropy_temperature_factor`)
  from a batch's token entropies: m, s the pivot quantile and RMS spread of log H used by `normalized_entropy`,
  k₊ = 1/max h, k₋ = 1/|min h| (so ĥ spans [−1, 1] on that batch, the paper's signs). [reconstruction]: the
  official sampler takes these four numbers but the released code does not show how they are computed."""
  valid = mask > 0
  e = jnp.log(jnp.maximum(sg(entropy), 1e-8))
  n = jnp.sum(valid)
  sorted_e = jnp.sort(jnp.where(valid, e, jnp.inf).reshape(-1))
  if sorted_e.size == 0:                # an empty batch: statistics 0, like every other metric of it
    q = jnp.zeros((), e.dtype)
  else:                                  # no valid token: q = 0 rather than the +inf fill
    q = jnp.where(n > 0, sorted_e[jnp.clip(jnp.round(pivot * (n - 1)).astype(jnp.int32), 0, sorted_e.size - 1)], 0.0)
  centred = jnp.where(valid, e - q, 0.0)
  scale = jnp.sqrt(jnp.sum(jnp.square(centred)) / jnp.maximum(n, 1))
  h = centred / jnp.where(scale > 0, scale, 1.0)
  pos, neg = jnp.max(jnp.where(valid, h, 0.0)), -jnp.min(jnp.where(valid, h, 0.0))
  inv = lambda d: jnp.where(d > 0, 1.0 / jnp.where(d > 0, d, 1.0), 0.0)
  return jnp.stack([q, scale, inv(pos), inv(neg)])


@register
def hapo(logp, old_logp, advantages, mask, *, entropy, ref_logp=None, eps_low=0.2, eps_high=0.2, entropy_pivot=0.8,
         clip_alpha=1.0, adv_beta=1.0, dual_clip_c=10.0, reproduce_code_sign=True, beta=0.0, kl_estimator="k3",
         agg="token-mean", max_len=None, token_weights=None):
  """HAPO: per-token trust regions and advantages driven by normalised token entropy ĥ.

    ĥ > 0: ε_high' = ε_high(1 + α ĥ);  ĥ ≤ 0: ε_low' = ε_low(1 − α ĥ);
    A_ent = Â(1 + β ĥ); neutral zone N = (1 − ε_low'/2, 1 + ε_high'/2) on sg(r):
      ĥ > 0 uses Â inside N and A_ent outside; ĥ ≤ 0 uses A_ent inside N and Â outside;
    ℓ = max(−A r, −A clip(r, 1−ε_low', 1+ε_high')), dual clip (c) for A < 0.

  "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
  arXiv 2509.16591. Defaults from the official code: pivot 0.8, α = β = 1, ε = 0.2, c = 10, token-mean.
  `reproduce_code_sign=True` reproduces the official code's sign of ĥ below the pivot (see
  `normalized_entropy`); set False for the paper's semantics. `entropy` [B, T] is the full-vocabulary
  entropy of the current policy (no gradient). Paper example (reproduce_code_sign=False): Â = 1,
  ĥ = 0.5, r = 1.3 → A = 1.5.
  """
  check_dual_clip(dual_clip_c)
  for name, value in (("clip_alpha", clip_alpha), ("adv_beta", adv_beta)):
    check_hparam(name, value)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  h = optional_token_array("entropy", entropy, inp, required=True, method="hapo")
  h_hat = normalized_entropy(h, inp.mask, pivot=entropy_pivot, reproduce_code_sign=reproduce_code_sign)
  high = h_hat > 0
  eps_high_t = jnp.where(high, eps_high * (1.0 + clip_alpha * h_hat), eps_high)
  eps_low_t = jnp.where(high, eps_low, eps_low * (1.0 - clip_alpha * h_hat))
  ratio = jnp.exp(ratios.token_log_ratio(inp.logp, inp.old_logp))
  r = sg(ratio)
  neutral = (r > 1.0 - eps_low_t / 2) & (r < 1.0 + eps_high_t / 2)
  adv_ent = inp.adv * (1.0 + adv_beta * h_hat)
  adv = sg(jnp.where(high, jnp.where(neutral, inp.adv, adv_ent), jnp.where(neutral, adv_ent, inp.adv)))
  per_token, clipped = trust_regions.clip_bounds_loss(ratio, adv, 1.0 - eps_low_t, 1.0 + eps_high_t)
  if dual_clip_c is not None:
    per_token, clipped = trust_regions.dual_clip(per_token, adv, clipped, dual_clip_c)
  stats = entropy_temperature_stats(h, inp.mask, pivot=entropy_pivot)   # for the sampler's adaptive temperature
  extra = dict(zip(("temperature_center", "temperature_scale", "temperature_k_pos", "temperature_k_neg"), stats))
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights, extra_metrics=extra)
