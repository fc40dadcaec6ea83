"""Objectives whose importance ratio lives above the token: sequence (GSPO, GMPO), token/sequence
mixtures (DHPO), sub-sentence segments (SSPO) and recommended items (Rank-GRPO)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.objectives import ratios, trust_regions
from rl_jax.objectives.core import optional_token_array, policy_loss, register, start
from rl_jax.objectives.core import kernel_impl as _impl
from rl_jax.objectives.inputs import check_choice, check_hparam
from rl_jax.objectives.aggregation import masked_mean

Array = jax.Array
sg = jax.lax.stop_gradient


def _gspo_like(logp, old_logp, advantages, mask, ref_logp, *, token_level, eps_low, eps_high, beta, kl_estimator,
               agg, max_len, token_weights, use_kernel=False):
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  log_ratio = ratios.token_log_ratio(inp.logp, inp.old_logp)
  seq_log_ratio = ratios.sequence_log_ratio(log_ratio, inp.mask)                   # [B]
  if token_level:
    log_s = ratios.sequence_token_log_ratio(inp.logp, seq_log_ratio)              # [B, T]
  else:
    log_s = jnp.broadcast_to(seq_log_ratio[:, None], inp.mask.shape)
  ratio = jnp.exp(log_s) * inp.mask
  if use_kernel and not token_level:
    from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
    per_token, clipped = ratio_clip_loss(inp.logp, inp.old_logp, inp.adv, inp.mask, mode="seq", eps_low=eps_low,
                                         eps_high=eps_high, impl=_impl(use_kernel))
  else:
    per_token, clipped = trust_regions.clipped_surrogate(ratio, inp.adv, eps_low=eps_low, eps_high=eps_high)
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)


@register
def gspo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=3e-4, eps_high=4e-4, beta=0.0,
         kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, token_weights=None, use_kernel=False):
  """GSPO: PPO-clip on the length-normalised sequence ratio.

    s_i = exp((1/L_i) Σ_t Δ_{i,t}),  J = (1/G) Σ_i min(s_i Â_i, clip(s_i, 1−ε_low, 1+ε_high) Â_i).

  "Group Sequence Policy Optimization" (Qwen), arXiv 2507.18071; no official code, defaults from the
  paper (ε = 3e-4 / 4e-4, no KL) and verl (sequence mean; log s capped at 10). With sequence-level
  advantages every token of a row has the same loss, so "seq-mean-token-mean" is the sequence mean.
  The gradient of s_i reaches all tokens of the sequence.
  Example: Δ = [0.1, −0.05, 0, 0.15] → s = e^0.05 = 1.05127; Â = 1 → clipped at 1.0004, zero gradient.
  """
  return _gspo_like(logp, old_logp, advantages, mask, ref_logp, token_level=False, eps_low=eps_low,
                    eps_high=eps_high, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
                    token_weights=token_weights, use_kernel=use_kernel)


@register
def gspo_token(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=3e-4, eps_high=4e-4, beta=0.0,
               kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, token_weights=None):
  """GSPO-token: s_{i,t} = sg(s_i) · π_θ(y_t)/sg(π_θ(y_t)), allowing per-token advantages.

  Same value and clipping as GSPO, and with Â_{i,t} = Â_i the same gradient (arXiv 2507.18071, §4.3).
  """
  return _gspo_like(logp, old_logp, advantages, mask, ref_logp, token_level=True, eps_low=eps_low,
                    eps_high=eps_high, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
                    token_weights=token_weights)


@register
def gmpo(logp, old_logp, advantages, mask, *, ref_logp=None, clip_c=0.4, beta=0.0, kl_estimator="k3"):
  """GMPO: maximise the geometric mean of token ratios, clipped one-sidedly in log space.

    Δ̃ = min(Δ, clip(Δ, −c, c)) if Â ≥ 0 else max(Δ, clip(Δ, −c, c)),
    ρ_i = exp((1/L_i) Σ_t Δ̃_{i,t}),  loss = mean_i (−Â_i ρ_i).

  "GMPO: Geometric-Mean Policy Optimization", arXiv 2507.20673; defaults from the official code
  (c = 0.4). Needs sequence-level advantages [B]. A KL term, if β > 0, uses seq-mean-token-mean.
  Example: Δ = [0.5, −0.6, 0.1], c = 0.4, Â = +1 → ρ = 0.96722, loss −0.96722.
  """
  if jnp.ndim(advantages) != 1:
    raise ValueError(f"gmpo needs sequence-level advantages of shape [B], got {tuple(jnp.shape(advantages))}.")
  check_hparam("clip_c", clip_c)
  agg = "seq-mean-token-mean"
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg)
  log_ratio = ratios.token_log_ratio(inp.logp, inp.old_logp)
  bounded = jnp.clip(log_ratio, -clip_c, clip_c)
  tilde = jnp.where(inp.adv >= 0, jnp.minimum(log_ratio, bounded), jnp.maximum(log_ratio, bounded))
  seq_ratio = jnp.exp(ratios.sequence_log_ratio(tilde, inp.mask, max_log=jnp.inf))          # [B]
  clipped = (tilde != log_ratio).astype(jnp.float32)
  # Every token of row i carries −Â_i ρ_i, so the sequence mean of token means is the mean over sequences.
  per_token = jnp.broadcast_to((-inp.seq_adv * seq_ratio)[:, None], inp.mask.shape)
  return policy_loss(per_token, inp, ratio=jnp.exp(log_ratio), clipped=clipped, agg=agg, beta=beta,
                     kl_estimator=kl_estimator,
                     extra_metrics={"seq_ratio_mean": masked_mean(seq_ratio, (inp.mask.sum(-1) > 0) * 1.0)})


def _mixing_weight(inp, mixing, entropy):
  check_choice("mixing", mixing, ("average", "entropy"))
  if mixing == "average":
    return jnp.full(inp.mask.shape, 0.5, jnp.float32)
  h = optional_token_array("entropy", entropy, inp, required=True, method="dhpo(mixing='entropy')")
  h_max = jnp.max(h * inp.mask)
  return sg(jnp.where(h_max > 0, h / jnp.where(h_max > 0, h_max, 1.0), 0.5))


@register
def dhpo(logp, old_logp, advantages, mask, *, ref_logp=None, mixing="average", mix_space="arithmetic", entropy=None,
         eps_low=0.2, eps_high=0.2, seq_eps_low=3e-4, seq_eps_high=4e-4, beta=0.0, kl_estimator="k3",
         agg="seq-mean-token-mean", max_len=None, token_weights=None):
  """DHPO: one clipped surrogate whose ratio mixes the token ratio and the GSPO sequence ratio.

    ρ = α r + (1−α) s,  ρ̃ = α clip(r, 1−ε_l, 1+ε_h) + (1−α) clip(s, 1−ε^seq_l, 1+ε^seq_h),
    ℓ = −min(ρ Â, ρ̃ Â)   (each branch clipped to its own region BEFORE mixing).

  "Orchestrating Tokens and Sequences: Dynamic Hybrid Policy Optimization for RLVR", arXiv 2601.05607.
  No official code was released: this is a reconstruction. Open points are keywords:
  `mixing` = "average" (α = 0.5) or "entropy" (α = sg(H_t / max_valid H), high entropy leans to the
  token ratio; needs `entropy` [B, T]); `mix_space` = "arithmetic" or "geometric" (ρ = r^α s^{1−α});
  token ε defaults 0.2/0.2, sequence ε 3e-4/4e-4 (GSPO's).
  """
  check_choice("mix_space", mix_space, ("arithmetic", "geometric"))
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high), ("seq_eps_low", seq_eps_low),
                                    ("seq_eps_high", seq_eps_high)))
  alpha = _mixing_weight(inp, mixing, entropy)
  log_r = ratios.token_log_ratio(inp.logp, inp.old_logp)
  log_s = jnp.broadcast_to(ratios.sequence_log_ratio(log_r, inp.mask)[:, None], inp.mask.shape)
  r, s = jnp.exp(log_r), jnp.exp(log_s)
  r_clip = jnp.clip(r, 1.0 - eps_low, 1.0 + eps_high)
  s_clip = jnp.clip(s, 1.0 - seq_eps_low, 1.0 + seq_eps_high)
  if mix_space == "arithmetic":
    rho, rho_clip = alpha * r + (1 - alpha) * s, alpha * r_clip + (1 - alpha) * s_clip
  else:
    rho = jnp.exp(alpha * log_r + (1 - alpha) * log_s)
    rho_clip = jnp.exp(alpha * jnp.log(r_clip) + (1 - alpha) * jnp.log(s_clip))
  unclipped, clipped_loss = -inp.adv * rho, -inp.adv * rho_clip
  per_token = jnp.maximum(unclipped, clipped_loss)
  clipped = (clipped_loss > unclipped).astype(jnp.float32)
  return policy_loss(per_token, inp, ratio=rho, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)


def segment_entropy_scale(entropy, mask, segment_ids, *, alpha, phi_min, phi_max):
  """SSPO's trust-region scale φ per token: clip((H̄_seg / mean_segments H̄)^α, φ_min, φ_max) (stop-gradient).

  H̄_seg is the mean token entropy of the token's segment; the batch mean is over non-empty segments.
  Reconstruction (arXiv 2511.04256 states only "wider for high-entropy segments").
  """
  seg_h = ratios.segment_mean(entropy, mask, segment_ids)                           # [B, T]
  b, t = mask.shape
  flat = (jnp.arange(b)[:, None] * t + jnp.clip(segment_ids.astype(jnp.int32), 0, t - 1)).reshape(-1)
  seg_h_flat = jax.ops.segment_max(jnp.where(mask > 0, seg_h, -jnp.inf).reshape(-1), flat, num_segments=b * t)
  present = jnp.isfinite(seg_h_flat)
  mean_h = jnp.sum(jnp.where(present, seg_h_flat, 0.0)) / jnp.maximum(jnp.sum(present), 1)
  ratio = seg_h / jnp.where(mean_h > 0, mean_h, 1.0)
  phi = jnp.clip(jnp.power(jnp.maximum(ratio, 0.0), alpha), phi_min, phi_max)
  return sg(jnp.where(mean_h > 0, phi, 1.0) * mask)


@register
def sspo(logp, old_logp, advantages, mask, *, segment_ids, ref_logp=None, entropy=None, eps_low=0.2, eps_high=0.2,
         entropy_alpha=1.0, phi_min=0.5, phi_max=2.0, beta=0.0, kl_estimator="k3", agg="seq-mean-token-mean",
         max_len=None, token_weights=None):
  """SSPO: PPO-clip on sub-sentence ratios with entropy-adapted bounds.

    ρ_{i,k} = exp(mean_{t∈S_{i,k}} Δ_t),  bounds 1 − ε_l φ_{i,k}, 1 + ε_h φ_{i,k},
    φ_{i,k} = clip((H̄_{i,k}/mean H̄)^α, φ_min, φ_max) (1 without `entropy`).

  "SSPO: Subsentence-level Policy Optimization", arXiv 2511.04256. No official code: a reconstruction.
  Segments come from `segment_ids` [B, T] (see `ratios.sentence_segment_ids` to split after
  punctuation/newline tokens); φ, its constants, ε and the aggregation are keywords.
  """
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  seg = optional_token_array("segment_ids", segment_ids, inp, required=True, method="sspo", dtype=jnp.int32)
  ratio = jnp.exp(ratios.segment_log_ratio(ratios.token_log_ratio(inp.logp, inp.old_logp), inp.mask, seg))
  phi = jnp.ones_like(ratio)
  if entropy is not None:
    h = optional_token_array("entropy", entropy, inp, required=True, method="sspo")
    phi = segment_entropy_scale(h, inp.mask, seg, alpha=entropy_alpha, phi_min=phi_min, phi_max=phi_max)
  per_token, clipped = trust_regions.clip_bounds_loss(ratio, inp.adv, 1.0 - eps_low * phi, 1.0 + eps_high * phi)
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)


@register
def rank_grpo(logp, old_logp, advantages, mask, *, rank_ids, ref_logp=None, eps_low=0.06, eps_high=0.08, beta=1e-3,
              kl_estimator="k3", agg="token-mean", max_len=None, token_weights=None):
  """Rank-GRPO: PPO-clip on item-level ratios (geometric mean of the item's token ratios).

    w_{i,k} = exp(mean_{t∈item k} Δ_t),  ℓ = −min(w Â, clip(w, 1−ε_l, 1+ε_h) Â) + β k3.

  "Rank-GRPO: Training LLM-based Conversational Recommender Systems with RL", arXiv 2510.20150.
  Defaults from the official code: ε = 0.06/0.08, β = 1e-3, token-mean (TRL "bnpo"); the paper
  averages over ranks instead (pass agg via your own rank weighting). `rank_ids` [B, T] gives each
  token's item index (newlines attach to the preceding item; overflow tokens form their own bin).
  Rank-level advantages [B, T] come from `rl_jax.advantages.rank_grpo`.
  """
  inp = start(logp, old_logp, advantages, mask, ref_logp, beta=beta, kl_estimator=kl_estimator, agg=agg,
              max_len=max_len, eps=(("eps_low", eps_low), ("eps_high", eps_high)))
  ranks = optional_token_array("rank_ids", rank_ids, inp, required=True, method="rank_grpo", dtype=jnp.int32)
  ratio = jnp.exp(ratios.segment_log_ratio(ratios.token_log_ratio(inp.logp, inp.old_logp), inp.mask, ranks))
  per_token, clipped = trust_regions.clipped_surrogate(ratio, inp.adv, eps_low=eps_low, eps_high=eps_high)
  return policy_loss(per_token, inp, ratio=ratio, clipped=clipped, agg=agg, max_len=max_len, beta=beta,
                     kl_estimator=kl_estimator, token_weights=token_weights)
