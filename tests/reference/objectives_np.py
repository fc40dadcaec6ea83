"""Float64 NumPy references for rl_jax's policy objectives, with hand-written gradients.

Every method: name(logp, old_logp, advantages, mask, *, ref_logp=None, **hparams) -> (loss, grad, metrics),
grad = d loss / d logp [B, T] (zero where mask == 0), stop-gradient terms held constant. Private keywords:
`_sg_logp` (the logp at which stop-gradient terms are frozen; default: logp itself, used by the finite-difference
tests) and `_token_weight` (a constant per-token factor on the policy loss, used by tis/mis).
Method-specific helpers (weights, bounds, conflict masks) live in objectives_parts_np.
"""

import math

import numpy as np

from reference.objectives_common_np import (Inputs, agg_weights, aggregate, finish, kl_estimate, kl_k1, kl_k2,
                                            kl_k3, ppo_clip_token, segment_ratio, token_ratio)
from reference.objectives_parts_np import (cispo_weights, dcpo_bounds, gtpo_conflict_weights, hapo_adapt,
                                           hapo_h_hat, minpro_weights, mismatch_weights, sentence_segment_ids,
                                           sspo_phi)

__all__ = [
    "grpo", "ppo_dual_clip", "dr_grpo", "dapo", "gspo", "gspo_token", "sapo", "dhpo", "sspo", "dcpo", "minpro",
    "hapo", "ngrpo", "cispo", "gmpo", "clip_cov", "kl_cov", "gtpo", "rank_grpo", "tis", "mis",
    "agg_weights", "aggregate", "kl_k1", "kl_k2", "kl_k3", "kl_estimate", "sentence_segment_ids",
    "gtpo_conflict_weights", "hapo_h_hat", "hapo_adapt", "dcpo_bounds", "minpro_weights", "cispo_weights",
    "mismatch_weights", "sspo_phi", "covariance",
]


def _local(D):
  return lambda V: V * D


def _ppo(x, eps_low, eps_high, dual_clip_c, kw):
  r, dr = token_ratio(x.lp, x.old)
  ell, g, active = ppo_clip_token(r, x.A, 1.0 - eps_low, 1.0 + eps_high, dual_clip_c)
  return finish(x, ell, _local(g * dr), r, active, **kw)


def _kw(agg, max_len, beta, kl_estimator, token_weight):
  return dict(agg=agg, max_len=max_len, beta=beta, kl_estimator=kl_estimator, token_weight=token_weight)


def grpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2, dual_clip_c=None,
         beta=0.04, kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """l = -min(r A, clip(r, 1-eps_low, 1+eps_high) A) (+ dual clip for A < 0) + beta k (DeepSeekMath, 2402.03300)."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  return _ppo(x, eps_low, eps_high, dual_clip_c, _kw(agg, max_len, beta, kl_estimator, _token_weight))


def ppo_dual_clip(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2, dual_clip_c=3.0,
                  beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """Dual-clip PPO (1912.09729)."""
  return grpo(logp, old_logp, advantages, mask, ref_logp=ref_logp, eps_low=eps_low, eps_high=eps_high,
              dual_clip_c=dual_clip_c, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
              _sg_logp=_sg_logp, _token_weight=_token_weight)


def dr_grpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2, dual_clip_c=None,
            beta=0.0, kl_estimator="k3", agg="seq-mean-token-sum-norm", max_len=3000, _sg_logp=None,
            _token_weight=None):
  """Dr. GRPO (2503.20783): sum over tokens / (N_seq * max_len)."""
  return grpo(logp, old_logp, advantages, mask, ref_logp=ref_logp, eps_low=eps_low, eps_high=eps_high,
              dual_clip_c=dual_clip_c, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
              _sg_logp=_sg_logp, _token_weight=_token_weight)


def dapo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0,
         beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """DAPO (2503.14476): clip-higher, token-mean."""
  return grpo(logp, old_logp, advantages, mask, ref_logp=ref_logp, eps_low=eps_low, eps_high=eps_high,
              dual_clip_c=dual_clip_c, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
              _sg_logp=_sg_logp, _token_weight=_token_weight)


def ngrpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.16, eps_high=0.24, dual_clip_c=None,
          beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """NGRPO (2509.18851) loss side: asymmetric clip."""
  return grpo(logp, old_logp, advantages, mask, ref_logp=ref_logp, eps_low=eps_low, eps_high=eps_high,
              dual_clip_c=dual_clip_c, beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len,
              _sg_logp=_sg_logp, _token_weight=_token_weight)


def _gspo_log_s(x, lp):
  """log s_i = min(sum_t m (lp - old) / max(L_i, 1), 10) and the indicator that the clamp is not active."""
  raw = (x.m * (lp - x.old)).sum(axis=1) / np.maximum(x.L, 1.0)
  return np.minimum(raw, 10.0), raw < 10.0


def gspo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=3e-4, eps_high=4e-4, beta=0.0,
         kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """GSPO (2507.18071): sequence ratio s_i = exp(mean_t delta), gradient through all tokens."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  log_s, live = _gspo_log_s(x, x.lp)
  s = np.exp(log_s)
  ratio = s[:, None] * np.ones((1, x.T))
  ell, g, active = ppo_clip_token(ratio, x.A, 1.0 - eps_low, 1.0 + eps_high)

  def vjp(V):
    c = (V * g).sum(axis=1) * s * live / np.maximum(x.L, 1.0)
    return c[:, None] * x.m

  return finish(x, ell, vjp, ratio, active, **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def gspo_token(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=3e-4, eps_high=4e-4, beta=0.0,
               kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """GSPO-token: log s_it = sg(log s_i) + lp - sg(lp) (clamp applied to log s_i before the stop-gradient)."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  log_s, _ = _gspo_log_s(x, x.lp_sg)
  ratio = np.exp(log_s[:, None] + x.lp - x.lp_sg)
  ell, g, active = ppo_clip_token(ratio, x.A, 1.0 - eps_low, 1.0 + eps_high)
  return finish(x, ell, _local(g * ratio), ratio, active, **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def sapo(logp, old_logp, advantages, mask, *, ref_logp=None, tau_pos=1.0, tau_neg=1.05, beta=0.0,
         kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """SAPO (2511.20347): l = -A sigmoid(tau (r - 1)) 4 / tau, tau = tau_pos if A > 0 else tau_neg."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  r, dr = token_ratio(x.lp, x.old)
  tau = np.where(x.A > 0, tau_pos, tau_neg)
  p = 1.0 / (1.0 + np.exp(-tau * (r - 1.0)))
  ell = -x.A * p * 4.0 / tau
  D = -x.A * 4.0 * p * (1.0 - p) * dr
  return finish(x, ell, _local(D), r, np.zeros_like(x.mb), **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def dhpo(logp, old_logp, advantages, mask, *, ref_logp=None, mixing="average", mix_space="arithmetic",
         entropy=None, eps_low=0.2, eps_high=0.2, seq_eps_low=3e-4, seq_eps_high=4e-4, beta=0.0,
         kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """DHPO (2601.05607, reconstruction): token ratio and sequence ratio, each clipped to its own region, then mixed."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  if mixing == "average":
    alpha = np.full((x.B, x.T), 0.5)
  elif mixing == "entropy":
    if entropy is None:
      raise ValueError("mixing='entropy' needs entropy")
    H = x.clean(entropy, "entropy")
    hmax = H[x.mb].max() if x.mb.any() else 0.0
    alpha = H / hmax if hmax > 0 else np.full((x.B, x.T), 0.5)
  else:
    raise ValueError(f"unknown mixing {mixing!r}")
  r, dr = token_ratio(x.lp, x.old)
  log_s, live = _gspo_log_s(x, x.lp)
  s = np.exp(log_s)[:, None] * np.ones((1, x.T))
  lo_t, hi_t, lo_s, hi_s = 1 - eps_low, 1 + eps_high, 1 - seq_eps_low, 1 + seq_eps_high
  r_in = ((r > lo_t) & (r < hi_t)).astype(float)
  s_in = ((s > lo_s) & (s < hi_s)).astype(float)
  # d(r)/dlp_t = dr (token-local); d(s_i)/dlp_u = s_i * live_i * m_u / L_i (row-wide).
  if mix_space == "arithmetic":
    rho = alpha * r + (1 - alpha) * s
    rho_c = alpha * np.clip(r, lo_t, hi_t) + (1 - alpha) * np.clip(s, lo_s, hi_s)
    tok_u, seq_u = alpha * dr, (1 - alpha) * s
    tok_c, seq_c = alpha * dr * r_in, (1 - alpha) * s * s_in
  elif mix_space == "geometric":
    rho = r ** alpha * s ** (1 - alpha)
    rho_c = np.clip(r, lo_t, hi_t) ** alpha * np.clip(s, lo_s, hi_s) ** (1 - alpha)
    tok_u, seq_u = rho * alpha * dr / r, rho * (1 - alpha)
    tok_c, seq_c = rho_c * alpha * dr / r * r_in, rho_c * (1 - alpha) * s_in
  else:
    raise ValueError(f"unknown mix_space {mix_space!r}")
  un, cl = -x.A * rho, -x.A * rho_c
  active = cl > un
  ell = np.where(active, cl, un)
  tok = np.where(active, tok_c, tok_u)
  seq = np.where(active, seq_c, seq_u)

  def vjp(V):
    G = V * -x.A
    row = (G * seq).sum(axis=1) * live / np.maximum(x.L, 1.0)
    return G * tok + row[:, None] * x.m

  return finish(x, ell, vjp, rho, active, **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def _segment_ppo(x, seg_ids, lo, hi, kw, extra=None):
  rho, seg_vjp = segment_ratio(x.lp, x.old, x.mb, seg_ids)
  ell, g, active = ppo_clip_token(rho, x.A, lo, hi)
  return finish(x, ell, lambda V: seg_vjp(V * g), rho, active, extra=extra, **kw)


def sspo(logp, old_logp, advantages, mask, *, ref_logp=None, segment_ids=None, entropy=None, eps_low=0.2,
         eps_high=0.2, entropy_alpha=1.0, phi_min=0.5, phi_max=2.0, beta=0.0, kl_estimator="k3",
         agg="seq-mean-token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """SSPO (2511.04256, reconstruction): segment ratio exp(mean delta), bounds widened by phi(segment entropy)."""
  if segment_ids is None:
    raise ValueError("sspo needs segment_ids")
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  seg = x.clean_int(segment_ids, "segment_ids")
  phi = sspo_phi(seg, x.mb, entropy, entropy_alpha=entropy_alpha, phi_min=phi_min, phi_max=phi_max)
  return _segment_ppo(x, seg, 1 - eps_low * phi, 1 + eps_high * phi,
                      _kw(agg, max_len, beta, kl_estimator, _token_weight))


def rank_grpo(logp, old_logp, advantages, mask, *, ref_logp=None, rank_ids=None, eps_low=0.06, eps_high=0.08,
              beta=1e-3, kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """Rank-GRPO (Zhu et al. 2025): item ratio exp(mean delta over the item's tokens), PPO clip, k3 KL."""
  if rank_ids is None:
    raise ValueError("rank_grpo needs rank_ids")
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  seg = x.clean_int(rank_ids, "rank_ids")
  return _segment_ppo(x, seg, 1 - eps_low, 1 + eps_high, _kw(agg, max_len, beta, kl_estimator, _token_weight))


def dcpo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0,
         beta=0.0, kl_estimator="k3", agg="seq-mean-token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """DCPO (2509.02333): clip bounds from the old probability q, |(r - 1) r q| <= eps."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  lo, hi = dcpo_bounds(x.old, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c)
  r, dr = token_ratio(x.lp, x.old)
  ell, g, active = ppo_clip_token(r, x.A, lo, hi, dual_clip_c)
  return finish(x, ell, _local(g * dr), r, active, **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def minpro(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=0.2, eps_high=0.2, include_current=False,
           cap_at_one=False, beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None,
           _token_weight=None):
  """MinPRO (2601.22718, reconstruction): PPO token loss times sg(min ratio over the valid prefix)."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  r_sg, _ = token_ratio(x.lp_sg, x.old)
  w = minpro_weights(r_sg, x.mb, include_current=include_current, cap_at_one=cap_at_one)
  r, dr = token_ratio(x.lp, x.old)
  ell, g, active = ppo_clip_token(r, x.A, 1 - eps_low, 1 + eps_high)
  return finish(x, w * ell, _local(w * g * dr), r, active, **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def hapo(logp, old_logp, advantages, mask, *, ref_logp=None, entropy=None, entropy_pivot=0.8, clip_alpha=1.0,
         adv_beta=1.0, eps_low=0.2, eps_high=0.2, dual_clip_c=10.0, reproduce_code_sign=True, beta=0.0,
         kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """HAPO (2509.16591): entropy-adaptive asymmetric clip bounds and advantage redistribution."""
  if entropy is None:
    raise ValueError("hapo needs entropy")
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  h_hat = hapo_h_hat(x.clean(entropy, "entropy"), x.mb, entropy_pivot=entropy_pivot,
                     reproduce_code_sign=reproduce_code_sign)
  r_sg, _ = token_ratio(x.lp_sg, x.old)
  el, eh, A = hapo_adapt(h_hat, x.A, r_sg, eps_low=eps_low, eps_high=eps_high, clip_alpha=clip_alpha,
                         adv_beta=adv_beta)
  A = np.where(x.mb, A, 0.0)
  r, dr = token_ratio(x.lp, x.old)
  ell, g, active = ppo_clip_token(r, A, 1 - el, 1 + eh, dual_clip_c)
  return finish(x, ell, _local(g * dr), r, active, **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def cispo(logp, old_logp, advantages, mask, *, ref_logp=None, eps_low=10.0, eps_high=0.2, cap_mode="relative",
          trust_mask=False, beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None,
          _token_weight=None):
  """CISPO (MiniMax-M1, 2506.13585): l = -sg(r_hat) A logp."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  r_sg, _ = token_ratio(x.lp_sg, x.old)
  w, keep, clipped = cispo_weights(r_sg, x.A, eps_low=eps_low, eps_high=eps_high, cap_mode=cap_mode,
                                   trust_mask=trust_mask)
  D = -w * keep * x.A
  return finish(x, D * x.lp, _local(D), r_sg, clipped, **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def gmpo(logp, old_logp, advantages, mask, *, ref_logp=None, clip_c=0.4, beta=0.0, kl_estimator="k3",
         _sg_logp=None):
  """GMPO (2507.20673): rho_i = exp(mean_t one-sided-clipped delta), loss = mean_i(-A_i rho_i)."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp, adv_rank=1)
  d = x.lp - x.old
  pos = (x.A_seq >= 0)[:, None]
  dc = np.clip(d, -clip_c, clip_c)
  dt = np.where(pos, np.minimum(d, dc), np.maximum(d, dc))
  live = np.where(pos, d <= clip_c, d >= -clip_c)
  rho = np.exp((x.m * dt).sum(axis=1) / np.maximum(x.L, 1.0))
  ell_seq = np.where(x.L > 0, -x.A_seq * rho, 0.0)
  loss_pg = float(ell_seq.sum() / x.n_seq)
  coef = np.where(x.L > 0, -x.A_seq * rho / np.maximum(x.L, 1.0) / x.n_seq, 0.0)
  grad = coef[:, None] * x.m * live
  ratio = rho[:, None] * np.ones((1, x.T))
  # Reuse finish for KL and metrics with a zero token loss, then add the sequence loss.
  loss, g_kl, metrics = finish(x, np.zeros((x.B, x.T)), lambda V: np.zeros_like(V), ratio, dt != d,
                               agg="seq-mean-token-mean", max_len=None, beta=beta, kl_estimator=kl_estimator)
  return loss_pg + loss, np.where(x.mb, grad + g_kl, 0.0), metrics


def covariance(x):
  """Cov_t = (A_t - mean_valid A) (sg(logp_t) - mean_valid sg(logp)) on valid tokens, 0 elsewhere."""
  n = max(1.0, x.m.sum())
  a = x.A - (x.m * x.A).sum() / n
  b = x.lp_sg - (x.m * x.lp_sg).sum() / n
  return np.where(x.mb, a * b, 0.0)


def clip_cov(logp, old_logp, advantages, mask, *, ref_logp=None, rng=None, eps_low=1.0, eps_high=1.0,
             clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0, beta=0.0, kl_estimator="k3", agg="token-mean",
             max_len=None, _sg_logp=None, _token_weight=None):
  """Clip-Cov (2505.22617): drop the loss of covariance-outlier tokens that are not PPO-clipped.
  Only the deterministic case (#candidates <= n, all selected) is implemented."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  cov = covariance(x)
  r_sg, _ = token_ratio(x.lp_sg, x.old)
  _, _, clipped_sg = ppo_clip_token(r_sg, x.A, 1 - eps_low, 1 + eps_high)
  cand = x.mb & (cov > clip_cov_lb) & (cov < clip_cov_ub) & ~clipped_sg
  n = max(int(math.floor(clip_cov_ratio * x.m.sum())), 1)
  if cand.sum() > n:
    raise NotImplementedError("random selection (#candidates > n) is not implemented in the reference")
  keep = (~cand).astype(float)
  r, dr = token_ratio(x.lp, x.old)
  ell, g, active = ppo_clip_token(r, x.A, 1 - eps_low, 1 + eps_high)
  extra = {"cov_selected": float(cand.sum())}
  return finish(x, keep * ell, _local(keep * g * dr), r, active | cand, extra=extra,
                **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def kl_cov(logp, old_logp, advantages, mask, *, ref_logp=None, kl_cov_frac=2e-3, kl_cov_coef=1.0, beta=0.0,
           kl_estimator="k3", agg="token-mean", max_len=None, _sg_logp=None, _token_weight=None):
  """KL-Cov (2505.22617): l = -A r, plus kl_cov_coef |delta| on the top-k covariance tokens; no clipping."""
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp)
  cov = covariance(x)
  k = max(1, int(math.floor(x.m.sum() * kl_cov_frac)))
  flat = [(-cov[i, t], i * x.T + t, i, t) for i in range(x.B) for t in range(x.T) if x.mb[i, t]]
  flat.sort()
  sel = np.zeros((x.B, x.T), dtype=bool)
  for _, _, i, t in flat[:k]:
    sel[i, t] = True
  d = x.lp - x.old
  r, dr = token_ratio(x.lp, x.old)
  ell = -x.A * r + np.where(sel, kl_cov_coef * np.abs(d), 0.0)
  D = -x.A * dr + np.where(sel, kl_cov_coef * np.sign(d), 0.0)
  extra = {"kl_cov_selected": float(sel.sum())}
  return finish(x, ell, _local(D), r, np.zeros_like(x.mb), extra=extra,
                **_kw(agg, max_len, beta, kl_estimator, _token_weight))


def gtpo(logp, old_logp, advantages, mask, *, ref_logp=None, token_ids=None, entropy=None, group_size=None,
         ent_threshold=0.7, ent_scale=0.1, conflict_weight=2.0, beta=0.0, kl_estimator="k3", _sg_logp=None):
  """GTPO (2508.03772): entropy-filtered advantages, conflict-token weights, sum over completions."""
  if token_ids is None or entropy is None or group_size is None:
    raise ValueError("gtpo needs token_ids, entropy and group_size")
  x = Inputs(logp, old_logp, advantages, mask, ref_logp, _sg_logp, adv_rank=1)
  tok = x.clean_int(token_ids, "token_ids")
  H = x.clean(entropy, "entropy")
  Lc = np.maximum(x.L, 1.0)
  h_bar = (x.m * H).sum(axis=1) / Lc
  A2 = np.where(h_bar > ent_threshold, 0.0, x.A_seq - ent_scale * h_bar)
  A2 = np.where(x.L > 0, A2, 0.0)
  delta, n_conf = gtpo_conflict_weights(tok, x.mb, x.A_seq, group_size, conflict_weight=conflict_weight)
  e = np.exp(x.lp - x.lp_sg)
  coef = -(A2 / (Lc * n_conf))[:, None] * delta * x.m
  # Policy term: sum over completions (weights 1); KL (if beta > 0) aggregated the same way.
  W = x.m / Lc[:, None]
  loss = float((coef * e).sum())
  grad = coef * e
  metrics = {"clip_frac": 0.0, "ratio_mean": float(e[x.mb].sum() / max(1.0, x.m.sum())),
             "ratio_max": float(e[x.mb].max()) if x.mb.any() else 0.0}
  if beta > 0:
    if x.ref is None:
      raise ValueError("beta > 0 needs ref_logp")
    kl, dkl = kl_estimate(kl_estimator, x.lp, x.ref)
    metrics["kl"] = float((W * kl).sum())
    loss += beta * metrics["kl"]
    grad = grad + beta * W * dkl
  return loss, np.where(x.mb, grad, 0.0), metrics


_TOKEN_BASES = {
    "grpo": grpo, "ppo_dual_clip": ppo_dual_clip, "dr_grpo": dr_grpo, "dapo": dapo, "ngrpo": ngrpo, "gspo": gspo,
    "gspo_token": gspo_token, "sapo": sapo, "dhpo": dhpo, "sspo": sspo, "rank_grpo": rank_grpo, "dcpo": dcpo,
    "minpro": minpro, "hapo": hapo, "cispo": cispo, "clip_cov": clip_cov, "kl_cov": kl_cov,
}


def _mismatch(kind, logp, old_logp, advantages, mask, ref_logp, rollout_logp, base, level, params, base_hparams):
  if rollout_logp is None:
    raise ValueError(f"{kind} needs rollout_logp")
  if base not in _TOKEN_BASES:
    raise ValueError(f"{kind}: base must be one of {sorted(_TOKEN_BASES)}, got {base!r}")
  x = Inputs(logp, old_logp, advantages, mask)
  w = mismatch_weights(kind, x.old, x.clean(rollout_logp, "rollout_logp"), x.mb, level=level, **params)
  loss, grad, metrics = _TOKEN_BASES[base](logp, old_logp, advantages, mask, ref_logp=ref_logp, _token_weight=w,
                                           **base_hparams)
  metrics = dict(metrics)
  metrics["is_weight_mean"] = float(w[x.mb].sum() / max(1.0, x.m.sum()))
  return loss, grad, metrics


def tis(logp, old_logp, advantages, mask, *, ref_logp=None, rollout_logp=None, base="grpo", level="token",
        tis_cap=2.0, **base_hparams):
  """Truncated importance sampling: base per-token loss times sg(min(exp(old - rollout), tis_cap))."""
  return _mismatch("tis", logp, old_logp, advantages, mask, ref_logp, rollout_logp, base, level,
                   {"tis_cap": tis_cap}, base_hparams)


def mis(logp, old_logp, advantages, mask, *, ref_logp=None, rollout_logp=None, base="grpo", level="token",
        mis_low=0.5, mis_high=2.0, **base_hparams):
  """Masked importance sampling: base per-token loss times sg(k 1[mis_low <= k <= mis_high])."""
  return _mismatch("mis", logp, old_logp, advantages, mask, ref_logp, rollout_logp, base, level,
                   {"mis_low": mis_low, "mis_high": mis_high}, base_hparams)
