"""PPO-clip objectives reweighted or regularised per token from the batch: STEER (entropy-change weights) and
LLDS (likelihood-preserving penalty)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives.core import check_dual_clip, optional_token_array, policy_loss, register, start
from rl_jax.objectives import ratios
from rl_jax.objectives.inputs import check_choice, check_hparam
from rl_jax.objectives.ppo import token_clip_terms

Array = jax.Array
sg = jax.lax.stop_gradient


def steer_weights(logp: Array, old_logp: Array, adv: Array, entropy: Array, mask: Array, *, w_min: float,
                  w_max: float, linear: bool = True) -> Array:
  """STEER token weights [B, T] from the first-order entropy change Ω of each token (stop-gradient).

    p = clip(π_θ(y_t), 1e-8, 1 − 1e-8),  Ω = |Â / π_old(y_t) · p(1 − p)(log p + H_t)|,
    linear: w = clip(w_max − (Ω − Ω_min)(w_max − w_min)/(Ω_max − Ω_min), w_min, w_max)
            ((w_min + w_max)/2 when Ω is flat),
    exponential: w = clip(exp(−k Ω), w_min, 1),  k = −log(w_min) / max(Ω_max, 0.02).

  Min and max run over the valid tokens of the batch; masked tokens get 0.
  """
  valid = mask > 0
  p = jnp.clip(jnp.exp(logp), 1e-8, 1.0 - 1e-8)
  change = p * (1.0 - p) * (jnp.log(p) + entropy)
  omega = jnp.abs(adv / jnp.clip(jnp.exp(old_logp), 1e-8, 1.0) * change)
  omega = jnp.where(valid & jnp.isfinite(omega), omega, 0.0)
  lo = jnp.min(jnp.where(valid, omega, jnp.inf))
  hi = jnp.max(jnp.where(valid, omega, -jnp.inf))
  if linear:
    spread = jnp.where(hi > lo, hi - lo, 1.0)
    w = jnp.where(hi > lo, jnp.clip(w_max - (omega - lo) * (w_max - w_min) / spread, w_min, w_max),
                  0.5 * (w_min + w_max))
  else:
    k = -jnp.log(w_min) / jnp.maximum(jnp.where(jnp.isfinite(hi), hi, 0.0), 0.02)
    w = jnp.clip(jnp.exp(-k * omega), w_min, 1.0)
  return sg(jnp.where(valid, w, 0.0))


@register
def steer(logp, old_logp, advantages, mask, *, entropy, ref_logp=None, w_min=0.8, w_max=1.2, linear=True,
          eps_low=0.2, eps_high=0.28, dual_clip_c=10.0, beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None,
          token_weights=None):
  """STEER: dual-clip PPO whose per-token losses are reweighted to keep each step's entropy change moderate.

    ℓ_t = w_t · ℓ^{PPO-dual-clip}_t,  w_t = steer_weights(Ω_t) ∈ [w_min, w_max] (large |Ω| → small w).

  "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective", arXiv 2510.10150. Defaults
  from the official code and its run_linear.sh: w ∈ [0.8, 1.2], linear mapping (`linear=False`: the
  exponential mapping), ε = 0.2 / 0.28, dual clip c = 10, token-mean, no KL. `entropy` [B, T] is the
  current policy's token entropy; p in Ω is the current π_θ(y_t) (no gradient through the weights).
  """
  check_hparam("w_min", w_min, strict=True)
  if not (isinstance(w_min, (int, float)) and isinstance(w_max, (int, float)) and w_min <= w_max):
    raise ValueError(f"steer needs 0 < w_min <= w_max, got w_min={w_min}, w_max={w_max}.")
  check_dual_clip(dual_clip_c)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  h = optional_token_array("entropy", entropy, inp, required=True, method="steer")
  per_token, clipped, ratio = token_clip_terms(inp, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c)
  w = steer_weights(sg(inp.logp), inp.old_logp, inp.adv, h, inp.mask, w_min=w_min, w_max=w_max, linear=linear)
  n = jnp.maximum(jnp.sum(inp.mask), 1.0)
  return policy_loss(w * per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights,
                     extra_metrics={"steer_weight_mean": jnp.sum(w) / n})


def mask_runs(mask: Array) -> Array:
  """Index [B, T] of each valid token's contiguous run of valid tokens within its row (0, 1, ...); 0 elsewhere.
  A response whose mask has holes (tool outputs masked out) has one run per action."""
  m = mask > 0
  starts = m & ~jnp.pad(m[:, :-1], ((0, 0), (1, 0)))
  return jnp.where(m, jnp.cumsum(starts, axis=-1) - 1, 0)


def llds_penalty(logp: Array, old_logp: Array, adv: Array, mask: Array, *, gate: str = "action") -> Array:
  """LLDS per-token penalty [B, T]: max(0, log π_old − log π_θ) on tokens with Â ≥ 0 whose gate unit lost
  likelihood (Σ (log π_old − log π_θ) > 0 over the unit); 0 elsewhere. Units: each contiguous run of
  valid Â ≥ 0 tokens ("action") or the whole response ("response"). The gate is stop-gradient."""
  check_choice("gate", gate, ("action", "response"))
  keep = (adv >= 0) & (mask > 0)
  drop = sg(old_logp - logp)
  if gate == "response":
    fell = jnp.sum(jnp.where(keep, drop, 0.0), axis=-1, keepdims=True) > 0
  else:
    fell = ratios.segment_mean(drop, keep.astype(jnp.float32), mask_runs(keep)) > 0
  return jnp.where(keep & fell, jnp.maximum(old_logp - logp, 0.0), 0.0)


@register
def llds(logp, old_logp, advantages, mask, *, ref_logp=None, llds_coef=0.2, gate="action", eps_low=0.2, eps_high=0.2,
         beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None):
  """LLDS: PPO-clip plus a likelihood-preserving penalty that acts only where a non-negative-advantage
  response's likelihood fell, and only on the tokens whose likelihood fell.

    loss = agg(ℓ^{PPO-clip}) + λ · token-mean(g_t · max(0, log π_old − log π_θ)),
    g_t = 1[Â_t ≥ 0] · 1[Σ_{t' ∈ unit(t)} (log π_old − log π_θ)_{t'} > 0].

  "On GRPO Collapse in Search-R1: The Lazy Likelihood-Displacement Death Spiral", arXiv 2512.04220.
  Defaults from the official code and its train script: λ = 0.2, the action-level gate ("action": units
  are the contiguous runs of valid Â ≥ 0 tokens, i.e. one per tool-call turn when observations are masked
  out; "response" is the paper's response-level gate "R"), on verl's vanilla PPO-clip (ε = 0.2,
  token-mean). For a single-turn response without mask holes the two gates agree.
  """
  check_hparam("llds_coef", llds_coef)
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  per_token, clipped, ratio = token_clip_terms(inp, eps_low=eps_low, eps_high=eps_high)
  penalty = llds_penalty(inp.logp, inp.old_logp, inp.adv, inp.mask, gate=gate)
  n = jnp.maximum(jnp.sum(inp.mask), 1.0)
  reg = jnp.sum(penalty * inp.mask) / n
  _, metrics = policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                           kl_estimator=kl_estimator, token_weights=token_weights,
                           extra_metrics={"llds_penalty": reg,
                                          "llds_active_frac": jnp.sum((penalty > 0) * inp.mask) / n})
  loss = metrics["loss"] + llds_coef * reg
  metrics["loss"] = loss
  return loss, metrics


def entropy_band_surrogate(logp: Array, entropy: Array, *, h_low: float, h_high: float) -> tuple[Array, Array]:
  """(per-token band term [B, T], band side b [B, T]) of SPINE's entropy band.

    b_t = +1 if H_t > h_high, −1 if H_t < h_low, 0 inside;  term_t = b_t · S_t,  S_t = −sg(log π_t + H_t) · log π_t,

  S_t is the sampled-token estimator of the token entropy's gradient (E_{y~π}[∇S] = ∇H), so minimising the
  term lowers H above the band and raises it below. H (`entropy`, no gradient) is the full-vocabulary entropy."""
  side = jnp.where(entropy > h_high, 1.0, jnp.where(entropy < h_low, -1.0, 0.0))
  surrogate = -sg(logp + entropy) * logp
  return side * surrogate, side


@register
def spine(logp, old_logp, advantages, mask, *, entropy, ref_logp=None, rho=0.2, h_low=0.3, h_high=2.0,
          band_coef=0.01, eps_low=0.2, eps_high=0.2, beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None,
          token_weights=None):
  """SPINE: PPO-clip updates only at forking tokens, plus an entropy band on them.

    F = forking_tokens(H, mask, ρ)  (the batch's top-ρ entropy tokens, 80/20 rule),
    ℓ_t = F_t · (ℓ^clip_t + c · b_t · S_t)   (`entropy_band_surrogate`), aggregated over all valid tokens.

  "SPINE: Token-Selective Test-Time Reinforcement Learning with Entropy-Band Regularization", arXiv
  2511.17938 (its rewards are majority votes: `rl_jax.rewards.majority_vote_rewards`). [reconstruction] from
  the abstract (no code reachable): updates only at forking tokens, a regulariser there that raises entropy
  below the band and lowers it above. Assumed, each a keyword: the forking rule (top ρ = 0.2 of the batch, as
  `advantages.forking_tokens`), absolute band edges h_low / h_high in nats, the coefficient c, the sampled-token
  entropy-gradient surrogate S, GRPO's symmetric ε = 0.2, token-mean. `entropy` [B, T] is the current
  policy's token entropy (no gradient).
  """
  from rl_jax.advantages.selection import forking_tokens
  check_hparam("band_coef", band_coef)
  if not (isinstance(h_low, (int, float)) and isinstance(h_high, (int, float)) and 0 <= h_low <= h_high):
    raise ValueError(f"spine needs 0 <= h_low <= h_high, got h_low={h_low}, h_high={h_high}.")
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  h = optional_token_array("entropy", entropy, inp, required=True, method="spine")
  fork = forking_tokens(h, inp.mask, rho=rho)
  per_token, clipped, ratio = token_clip_terms(inp, eps_low=eps_low, eps_high=eps_high, dual_clip_c=None)
  band, side = entropy_band_surrogate(inp.logp, h, h_low=h_low, h_high=h_high)
  n = jnp.maximum(jnp.sum(fork), 1.0)
  extra = {"fork_frac": jnp.sum(fork) / jnp.maximum(jnp.sum(inp.mask), 1.0),
           "band_low_frac": jnp.sum(fork * (side < 0)) / n, "band_high_frac": jnp.sum(fork * (side > 0)) / n}
  return policy_loss(fork * (per_token + band_coef * band), inp, ratio=ratio, clipped=clipped * fork, agg=agg,
                     max_len=max_len, beta=beta, kl_estimator=kl_estimator, token_weights=token_weights,
                     extra_metrics=extra)
