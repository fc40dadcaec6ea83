"""Float64 NumPy references for the policy objectives, written from the specification with explicit
loops over sequences and tokens.

Each `name(lp, lpf, old, adv, mask, ref, **hp)` returns the scalar loss. `lp` is the live log-prob
(what the gradient is taken against) and `lpf` a frozen copy used wherever the method applies a
stop-gradient, so `grad()` can differentiate by central finite differences in float64 while
respecting stop-gradient semantics. Inputs are already masked (0 on padding).
"""

import math

import numpy as np

CLAMP = 20.0


def _rows(mask):
  return [i for i in range(mask.shape[0]) if mask[i].sum() > 0]


def aggregate(loss, mask, agg, max_len=None):
  B, T = mask.shape
  rows = _rows(mask)
  n_seq = max(len(rows), 1)
  if agg == "token-mean":
    return sum(loss[i, t] for i in range(B) for t in range(T) if mask[i, t]) / max(mask.sum(), 1.0)
  if agg == "seq-mean-token-mean":
    return sum(sum(loss[i, t] for t in range(T) if mask[i, t]) / mask[i].sum() for i in rows) / n_seq
  if agg == "seq-mean-token-sum":
    return sum(loss[i, t] for i in range(B) for t in range(T) if mask[i, t]) / n_seq
  if agg == "seq-mean-token-sum-norm":
    return sum(loss[i, t] for i in range(B) for t in range(T) if mask[i, t]) / (n_seq * max_len)
  raise ValueError(agg)


def kl(lp, ref, kind):
  x = ref - lp
  if kind == "k1":
    return -x
  if kind == "k2":
    return 0.5 * x * x
  xc = np.clip(x, -CLAMP, CLAMP)
  return np.clip(np.exp(xc) - xc - 1.0, -10.0, 10.0)


def _delta(lp, old):
  return np.clip(lp - old, -CLAMP, CLAMP)


def _tok_adv(adv, mask):
  return np.broadcast_to(adv[:, None], mask.shape) * mask if adv.ndim == 1 else adv * mask


def _finish(per_token, lp, ref, mask, agg, max_len, beta, kl_estimator, token_weights=None):
  if token_weights is not None:
    per_token = per_token * token_weights
  loss = aggregate(per_token, mask, agg, max_len)
  if beta > 0:
    loss += beta * aggregate(kl(lp, ref, kl_estimator), mask, agg, max_len)
  return loss


def ppo_clip_token(r, a, lo, hi, dual_c=None):
  loss = max(-a * r, -a * min(max(r, lo), hi))
  if dual_c is not None and a < 0:
    loss = min(loss, -a * dual_c)
  return loss


def _clip_method(lp, lpf, old, adv, mask, ref, *, eps_low, eps_high, dual_clip_c, beta, kl_estimator, agg, max_len,
                 token_weights=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    for t in range(lp.shape[1]):
      if mask[i, t]:
        per[i, t] = ppo_clip_token(math.exp(d[i, t]), A[i, t], 1 - eps_low, 1 + eps_high, dual_clip_c)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator, token_weights)


def grpo(lp, lpf, old, adv, mask, ref, eps_low=0.2, eps_high=0.2, dual_clip_c=None, beta=0.04, kl_estimator="k3",
         agg="seq-mean-token-mean", max_len=None, token_weights=None):
  return _clip_method(lp, lpf, old, adv, mask, ref, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c,
                      beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len, token_weights=token_weights)


def ppo_dual_clip(lp, lpf, old, adv, mask, ref, eps_low=0.2, eps_high=0.2, dual_clip_c=3.0, beta=0.0,
                  kl_estimator="k3", agg="token-mean", max_len=None):
  return _clip_method(lp, lpf, old, adv, mask, ref, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c,
                      beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len)


def dr_grpo(lp, lpf, old, adv, mask, ref, eps_low=0.2, eps_high=0.2, beta=0.0, kl_estimator="k3",
            agg="seq-mean-token-sum-norm", max_len=3000):
  return _clip_method(lp, lpf, old, adv, mask, ref, eps_low=eps_low, eps_high=eps_high, dual_clip_c=None, beta=beta,
                      kl_estimator=kl_estimator, agg=agg, max_len=max_len)


def dapo(lp, lpf, old, adv, mask, ref, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0, beta=0.0, kl_estimator="k3",
         agg="token-mean", max_len=None, token_weights=None):
  return _clip_method(lp, lpf, old, adv, mask, ref, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c,
                      beta=beta, kl_estimator=kl_estimator, agg=agg, max_len=max_len, token_weights=token_weights)


def ngrpo(lp, lpf, old, adv, mask, ref, eps_low=0.16, eps_high=0.24, beta=0.0, kl_estimator="k3", agg="token-mean",
          max_len=None):
  return _clip_method(lp, lpf, old, adv, mask, ref, eps_low=eps_low, eps_high=eps_high, dual_clip_c=None, beta=beta,
                      kl_estimator=kl_estimator, agg=agg, max_len=max_len)


def dcpo(lp, lpf, old, adv, mask, ref, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0, beta=0.0, kl_estimator="k3",
         agg="seq-mean-token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    for t in range(lp.shape[1]):
      if mask[i, t]:
        q = max(math.exp(old[i, t]), 1e-30)
        lo = 0.5 + 0.5 * math.sqrt(max(1 - 4 * eps_low / q, 0.0))
        hi = min(0.5 + 0.5 * math.sqrt(1 + 4 * eps_high / q), max(dual_clip_c, 10.0))
        per[i, t] = ppo_clip_token(math.exp(d[i, t]), A[i, t], lo, hi, dual_clip_c)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def minpro(lp, lpf, old, adv, mask, ref, eps_low=0.2, eps_high=0.2, include_current=False, cap_at_one=False,
           beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  d, df = _delta(lp, old), _delta(lpf, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    seen = []
    for t in range(lp.shape[1]):
      if not mask[i, t]:
        continue
      window = seen + ([math.exp(df[i, t])] if include_current else [])
      w = min(window) if window else 1.0
      if cap_at_one:
        w = min(w, 1.0)
      per[i, t] = w * ppo_clip_token(math.exp(d[i, t]), A[i, t], 1 - eps_low, 1 + eps_high)
      seen.append(math.exp(df[i, t]))
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def _seq_log_ratio(d, mask, i, cap=10.0):
  return min(sum(d[i, t] for t in range(d.shape[1]) if mask[i, t]) / max(mask[i].sum(), 1.0), cap)


def gspo(lp, lpf, old, adv, mask, ref, eps_low=3e-4, eps_high=4e-4, beta=0.0, kl_estimator="k3",
         agg="seq-mean-token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  per = np.zeros_like(lp)
  for i in _rows(mask):
    s = math.exp(_seq_log_ratio(d, mask, i))
    for t in range(lp.shape[1]):
      if mask[i, t]:
        per[i, t] = ppo_clip_token(s, A[i, t], 1 - eps_low, 1 + eps_high)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def gspo_token(lp, lpf, old, adv, mask, ref, eps_low=3e-4, eps_high=4e-4, beta=0.0, kl_estimator="k3",
               agg="seq-mean-token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  df = _delta(lpf, old)
  per = np.zeros_like(lp)
  for i in _rows(mask):
    log_s = _seq_log_ratio(df, mask, i)
    for t in range(lp.shape[1]):
      if mask[i, t]:
        per[i, t] = ppo_clip_token(math.exp(log_s + lp[i, t] - lpf[i, t]), A[i, t], 1 - eps_low, 1 + eps_high)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def sapo(lp, lpf, old, adv, mask, ref, tau_pos=1.0, tau_neg=1.05, beta=0.0, kl_estimator="k3",
         agg="seq-mean-token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    for t in range(lp.shape[1]):
      if mask[i, t]:
        tau = tau_pos if A[i, t] > 0 else tau_neg
        per[i, t] = -A[i, t] * 4.0 / tau / (1.0 + math.exp(-tau * (math.exp(d[i, t]) - 1.0)))
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def cispo(lp, lpf, old, adv, mask, ref, eps_low=10.0, eps_high=0.2, cap_mode="relative", trust_mask=False, beta=0.0,
          kl_estimator="k3", agg="token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  df = _delta(lpf, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    for t in range(lp.shape[1]):
      if mask[i, t]:
        r = math.exp(df[i, t])
        w = min(max(r, 1 - eps_low), 1 + eps_high) if cap_mode == "relative" else min(r, eps_high)
        drop = trust_mask and ((A[i, t] > 0 and r > 1 + eps_high) or (A[i, t] < 0 and r < 1 - eps_low))
        per[i, t] = 0.0 if drop else -w * A[i, t] * lp[i, t]
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def gmpo(lp, lpf, old, adv, mask, ref, clip_c=0.4, beta=0.0, kl_estimator="k3"):
  d = _delta(lp, old)
  rows = _rows(mask)
  total = 0.0
  for i in rows:
    vals = []
    for t in range(lp.shape[1]):
      if mask[i, t]:
        c = min(max(d[i, t], -clip_c), clip_c)
        vals.append(min(d[i, t], c) if adv[i] >= 0 else max(d[i, t], c))
    total += -adv[i] * math.exp(sum(vals) / len(vals))
  loss = total / max(len(rows), 1)
  if beta > 0:
    loss += beta * aggregate(kl(lp, ref, kl_estimator), mask, "seq-mean-token-mean")
  return loss


def _segment_means(x, mask, seg, i):
  out = {}
  for t in range(x.shape[1]):
    if mask[i, t]:
      out.setdefault(int(seg[i, t]), []).append(x[i, t])
  return {k: sum(v) / len(v) for k, v in out.items()}


def dhpo(lp, lpf, old, adv, mask, ref, mixing="average", mix_space="arithmetic", entropy=None, eps_low=0.2,
         eps_high=0.2, seq_eps_low=3e-4, seq_eps_high=4e-4, beta=0.0, kl_estimator="k3", agg="seq-mean-token-mean",
         max_len=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  hmax = max((entropy[i, t] for i in range(lp.shape[0]) for t in range(lp.shape[1]) if mask[i, t]), default=0.0) \
      if mixing == "entropy" else 0.0
  per = np.zeros_like(lp)
  for i in _rows(mask):
    log_s = _seq_log_ratio(d, mask, i)
    for t in range(lp.shape[1]):
      if not mask[i, t]:
        continue
      alpha = 0.5 if mixing == "average" or hmax <= 0 else entropy[i, t] / hmax
      r, s = math.exp(d[i, t]), math.exp(log_s)
      rc, sc = min(max(r, 1 - eps_low), 1 + eps_high), min(max(s, 1 - seq_eps_low), 1 + seq_eps_high)
      if mix_space == "arithmetic":
        rho, rho_c = alpha * r + (1 - alpha) * s, alpha * rc + (1 - alpha) * sc
      else:
        rho, rho_c = r ** alpha * s ** (1 - alpha), rc ** alpha * sc ** (1 - alpha)
      per[i, t] = max(-A[i, t] * rho, -A[i, t] * rho_c)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def sspo(lp, lpf, old, adv, mask, ref, segment_ids=None, entropy=None, eps_low=0.2, eps_high=0.2, entropy_alpha=1.0,
         phi_min=0.5, phi_max=2.0, beta=0.0, kl_estimator="k3", agg="seq-mean-token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  B, T = lp.shape
  seg_h = [_segment_means(entropy, mask, segment_ids, i) for i in range(B)] if entropy is not None else None
  if seg_h is not None:
    all_h = [h for row in seg_h for h in row.values()]
    mean_h = sum(all_h) / max(len(all_h), 1)
  per = np.zeros_like(lp)
  for i in range(B):
    seg_d = _segment_means(d, mask, segment_ids, i)
    for t in range(T):
      if not mask[i, t]:
        continue
      k = int(segment_ids[i, t])
      phi = 1.0
      if seg_h is not None and mean_h > 0:
        phi = min(max((seg_h[i][k] / mean_h) ** entropy_alpha, phi_min), phi_max)
      per[i, t] = ppo_clip_token(math.exp(seg_d[k]), A[i, t], 1 - eps_low * phi, 1 + eps_high * phi)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def rank_grpo(lp, lpf, old, adv, mask, ref, rank_ids=None, eps_low=0.06, eps_high=0.08, beta=1e-3,
              kl_estimator="k3", agg="token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    seg_d = _segment_means(d, mask, rank_ids, i)
    for t in range(lp.shape[1]):
      if mask[i, t]:
        per[i, t] = ppo_clip_token(math.exp(seg_d[int(rank_ids[i, t])]), A[i, t], 1 - eps_low, 1 + eps_high)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def hapo(lp, lpf, old, adv, mask, ref, entropy=None, eps_low=0.2, eps_high=0.2, entropy_pivot=0.8, clip_alpha=1.0,
         adv_beta=1.0, dual_clip_c=10.0, reproduce_code_sign=True, beta=0.0, kl_estimator="k3", agg="token-mean",
         max_len=None):
  A = _tok_adv(adv, mask)
  d, df = _delta(lp, old), _delta(lpf, old)
  B, T = lp.shape
  cells = [(i, t) for i in range(B) for t in range(T) if mask[i, t]]
  e = {c: math.log(max(entropy[c], 1e-8)) for c in cells}
  q = float(np.quantile(np.array([e[c] for c in cells]), entropy_pivot, method="nearest")) if cells else 0.0
  s = math.sqrt(sum((e[c] - q) ** 2 for c in cells) / max(len(cells), 1))
  h = {c: ((e[c] - q) / s if s > 0 else 0.0) for c in cells}
  pos = max([v for v in h.values() if v > 0], default=0.0)
  neg = min([v for v in h.values() if v < 0], default=0.0)
  per = np.zeros_like(lp)
  for c in cells:
    v = h[c]
    if v > 0:
      hh = v / pos
    elif v < 0:
      hh = v / (neg if reproduce_code_sign else abs(neg))
    else:
      hh = 0.0
    e_hi = eps_high * (1 + clip_alpha * hh) if hh > 0 else eps_high
    e_lo = eps_low if hh > 0 else eps_low * (1 - clip_alpha * hh)
    rf = math.exp(df[c])
    inside = (1 - e_lo / 2) < rf < (1 + e_hi / 2)
    a_ent = A[c] * (1 + adv_beta * hh)
    a = (A[c] if inside else a_ent) if hh > 0 else (a_ent if inside else A[c])
    per[c] = ppo_clip_token(math.exp(d[c]), a, 1 - e_lo, 1 + e_hi, dual_clip_c)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def kl_cov(lp, lpf, old, adv, mask, ref, kl_cov_frac=2e-3, kl_cov_coef=1.0, beta=0.0, kl_estimator="k3",
           agg="token-mean", max_len=None):
  A = _tok_adv(adv, mask)
  d = _delta(lp, old)
  B, T = lp.shape
  cells = [(i, t) for i in range(B) for t in range(T) if mask[i, t]]
  if not cells:
    return 0.0
  ma = sum(A[c] for c in cells) / len(cells)
  ml = sum(lpf[c] for c in cells) / len(cells)
  cov = {c: (A[c] - ma) * (lpf[c] - ml) for c in cells}
  k = max(1, int(math.floor(len(cells) * kl_cov_frac)))
  chosen = set(sorted(cells, key=lambda c: (-cov[c], c[0] * T + c[1]))[:k])
  per = np.zeros_like(lp)
  for c in cells:
    per[c] = -A[c] * math.exp(d[c]) + (kl_cov_coef * abs(d[c]) if c in chosen else 0.0)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def clip_cov(lp, lpf, old, adv, mask, ref, rng=None, eps_low=1.0, eps_high=1.0, clip_cov_ratio=2e-4,
             clip_cov_lb=1.0, clip_cov_ub=5.0, beta=0.0, kl_estimator="k3", agg="token-mean", max_len=None):
  """Deterministic case only: every candidate is detached (callers make #candidates ≤ n)."""
  A = _tok_adv(adv, mask)
  d, df = _delta(lp, old), _delta(lpf, old)
  B, T = lp.shape
  cells = [(i, t) for i in range(B) for t in range(T) if mask[i, t]]
  if not cells:
    return 0.0
  ma = sum(A[c] for c in cells) / len(cells)
  ml = sum(lpf[c] for c in cells) / len(cells)
  n = max(int(math.floor(clip_cov_ratio * len(cells))), 1)
  per = np.zeros_like(lp)
  cands = []
  for c in cells:
    rf = math.exp(df[c])
    clipped = -A[c] * min(max(rf, 1 - eps_low), 1 + eps_high) > -A[c] * rf
    cov = (A[c] - ma) * (lpf[c] - ml)
    if not clipped and clip_cov_lb < cov < clip_cov_ub:
      cands.append(c)
  if len(cands) > n:
    raise NotImplementedError("random selection: make #candidates <= n for a deterministic reference")
  for c in cells:
    per[c] = 0.0 if c in cands else ppo_clip_token(math.exp(d[c]), A[c], 1 - eps_low, 1 + eps_high)
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def gtpo_delta(tokens, mask, adv, G, W=2.0):
  """Conflict weights by brute force over (position, token) pairs, forward and backward."""
  B, T = tokens.shape
  delta = np.ones((B, T))
  n_conf = np.ones(B)
  for g0 in range(0, B, G):
    rows = list(range(g0, g0 + G))
    pos = [k for k in rows if adv[k] > 0]
    neg = [k for k in rows if adv[k] < 0]
    L = {k: int(mask[k].sum()) for k in rows}

    def raw(i, t, aligned):
      def tok(k, tt):
        if aligned:
          return tokens[k, L[k] - 1 - tt] if tt < L[k] else None
        return tokens[k, tt] if mask[k, tt] else None
      v = tok(i, t)
      return v is not None and any(tok(k, t) == v for k in pos) and any(tok(k, t) == v for k in neg)

    for i in rows:
      if adv[i] == 0:
        continue
      w = W if adv[i] > 0 else 0.0
      fwd, bwd = set(), set()
      for t in range(T):
        if not raw(i, t, False):
          break
        fwd.add(t)
      for p in range(L[i]):
        if not raw(i, p, True):
          break
        bwd.add(L[i] - 1 - p)
      for t in fwd:
        delta[i, t] *= w
      for t in bwd:
        delta[i, t] *= w
      n_conf[i] = max(1, len(fwd | bwd))
  return delta * mask, n_conf


def gtpo(lp, lpf, old, adv, mask, ref, token_ids=None, entropy=None, group_size=None, ent_threshold=0.7,
         ent_scale=0.1, conflict_weight=2.0, beta=0.0, kl_estimator="k3"):
  delta, n_conf = gtpo_delta(token_ids, mask, adv, group_size, conflict_weight)
  total = 0.0
  for i in _rows(mask):
    L = mask[i].sum()
    hbar = sum(entropy[i, t] for t in range(lp.shape[1]) if mask[i, t]) / L
    a = 0.0 if hbar > ent_threshold else adv[i] - ent_scale * hbar
    total += -sum(math.exp(lp[i, t] - lpf[i, t]) * a * delta[i, t] for t in range(lp.shape[1]) if mask[i, t]) / (
        L * n_conf[i])
  if beta > 0:
    total += beta * aggregate(kl(lp, ref, kl_estimator), mask, "seq-mean-token-mean")
  return total


def _mismatch_weights(old, roll, mask, level):
  logk = np.clip(old - roll, -CLAMP, CLAMP) * mask
  if level == "sequence":
    logk = np.broadcast_to(logk.sum(-1, keepdims=True), logk.shape)
  return np.exp(logk) * mask


def tis(lp, lpf, old, adv, mask, ref, rollout_logp=None, base="grpo", level="token", tis_cap=2.0, **hp):
  w = np.minimum(_mismatch_weights(old, rollout_logp, mask, level), tis_cap) * mask
  return globals()[base](lp, lpf, old, adv, mask, ref, token_weights=w, **hp)


def mis(lp, lpf, old, adv, mask, ref, rollout_logp=None, base="grpo", level="token", mis_low=0.5, mis_high=2.0, **hp):
  k = _mismatch_weights(old, rollout_logp, mask, level)
  w = np.where((k >= mis_low) & (k <= mis_high), k, 0.0) * mask
  return globals()[base](lp, lpf, old, adv, mask, ref, token_weights=w, **hp)


def topr(lp, lpf, old, adv, mask, ref, beta=0.0, kl_estimator="k3", agg="seq-mean-token-sum", max_len=None):
  df = _delta(lpf, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    rho = math.exp(min(sum(df[i, t] for t in range(lp.shape[1]) if mask[i, t]), 20.0))
    w = 1.0 if adv[i] >= 0 else min(max(rho, 0.0), 1.0)
    for t in range(lp.shape[1]):
      if mask[i, t]:
        per[i, t] = -w * adv[i] * lp[i, t]
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def minirl(lp, lpf, old, adv, mask, ref, rollout_logp=None, eps_low=0.2, eps_high=0.2, beta=0.0, kl_estimator="k3",
           agg="seq-mean-token-sum", max_len=None):
  A = _tok_adv(adv, mask)
  d, df = _delta(lp, old), _delta(lpf, old)
  per = np.zeros_like(lp)
  for i in range(lp.shape[0]):
    for t in range(lp.shape[1]):
      if not mask[i, t]:
        continue
      rf = math.exp(df[i, t])
      if (A[i, t] > 0 and rf > 1 + eps_high) or (A[i, t] < 0 and rf < 1 - eps_low):
        continue
      k = math.exp(np.clip(old[i, t] - rollout_logp[i, t], -CLAMP, CLAMP)) if rollout_logp is not None else 1.0
      per[i, t] = -k * math.exp(d[i, t]) * A[i, t]
  return _finish(per, lp, ref, mask, agg, max_len, beta, kl_estimator)


def value_and_grad(fn, lp, old, adv, mask, ref, h=1e-6, **hp):
  """Loss and d loss / d lp by central differences in float64, stop-gradient terms frozen at lp."""
  lp = np.asarray(lp, np.float64)
  args = [np.asarray(x, np.float64) if x is not None else None for x in (old, adv, mask, ref)]
  loss = fn(lp, lp, *args, **hp)
  grad = np.zeros_like(lp)
  for idx in zip(*np.nonzero(args[2])):
    up, down = lp.copy(), lp.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (fn(up, lp, *args, **hp) - fn(down, lp, *args, **hp)) / (2 * h)
  return loss, grad
