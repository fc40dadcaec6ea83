"""Method-specific pieces of the objective references (float64 NumPy loops): clip bounds, prefix weights,
entropy normalisation, conflict masks, segment ids and importance weights. All inputs are expected to be
cleaned already (0 at masked positions) unless stated otherwise."""

import math

import numpy as np


def dcpo_bounds(old_logp, *, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0):
  """DCPO: q = max(exp(old), 1e-30); lo = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / q, 0));
  hi = min(1/2 + 1/2 sqrt(1 + 4 eps_high / q), max(dual_clip_c, 10))."""
  q = np.maximum(np.exp(np.asarray(old_logp, np.float64)), 1e-30)
  lo = 0.5 + 0.5 * np.sqrt(np.maximum(1.0 - 4.0 * eps_low / q, 0.0))
  hi = np.minimum(0.5 + 0.5 * np.sqrt(1.0 + 4.0 * eps_high / q), max(dual_clip_c, 10.0))
  return lo, hi


def minpro_weights(ratio, mask, *, include_current=False, cap_at_one=False):
  """w_t = min over valid j < t (j <= t with include_current) of ratio_j; 1 for an empty prefix; min(w, 1) if capped."""
  mb = np.asarray(mask) != 0
  B, T = mb.shape
  w = np.ones((B, T))
  for i in range(B):
    for t in range(T):
      stop = t + 1 if include_current else t
      prefix = [ratio[i, j] for j in range(stop) if mb[i, j]]
      v = min(prefix) if prefix else 1.0
      w[i, t] = min(v, 1.0) if cap_at_one else v
  return np.where(mb, w, 0.0)


def nearest_quantile(values, q):
  """Sorted ascending, index round-half-even(q (n - 1)) (numpy method='nearest')."""
  s = sorted(float(v) for v in values)
  return s[int(round(q * (len(s) - 1)))]


def hapo_h_hat(entropy, mask, *, entropy_pivot=0.8, reproduce_code_sign=True):
  """HAPO normalised entropy h_hat [B, T] (0 where masked)."""
  mb = np.asarray(mask) != 0
  H = np.where(mb, np.asarray(entropy, np.float64), 0.0)
  out = np.zeros(H.shape)
  if not mb.any():
    return out
  e = np.log(np.maximum(H, 1e-8))
  q = nearest_quantile(e[mb], entropy_pivot)
  d = np.where(mb, e - q, 0.0)
  s = math.sqrt(float((d[mb] ** 2).mean()))
  h = d / s if s > 0 else np.zeros(H.shape)
  pos = h[mb & (h > 0)]
  neg = h[mb & (h < 0)]
  for i, t in zip(*np.nonzero(mb)):
    v = h[i, t]
    if v > 0:
      out[i, t] = v / pos.max()
    elif neg.size:
      out[i, t] = v / (neg.min() if reproduce_code_sign else abs(neg.min()))
  return out


def hapo_adapt(h_hat, A, ratio_sg, *, eps_low=0.2, eps_high=0.2, clip_alpha=1.0, adv_beta=1.0):
  """Adapted bounds (eps_low', eps_high') and the (stop-gradient) advantage with the neutral zone
  N = (1 - eps_low'/2, 1 + eps_high'/2), open, on sg(r)."""
  h_hat, A, r = (np.asarray(a, np.float64) for a in (h_hat, A, ratio_sg))
  high = h_hat > 0
  eh = np.where(high, eps_high * (1 + clip_alpha * h_hat), eps_high)
  el = np.where(high, eps_low, eps_low * (1 - clip_alpha * h_hat))
  a_ent = A * (1 + adv_beta * h_hat)
  in_n = (r > 1 - el / 2) & (r < 1 + eh / 2)
  adv = np.where(high, np.where(in_n, A, a_ent), np.where(in_n, a_ent, A))
  return el, eh, adv


def cispo_weights(ratio_sg, A, *, eps_low=10.0, eps_high=0.2, cap_mode="relative", trust_mask=False):
  """(r_hat, keep, clipped): r_hat = clip(r, 1-eps_low, 1+eps_high) (relative) or min(r, eps_high) (absolute);
  keep = 0 where the trust mask drops the token; clipped = r_hat != r (the weight was truncated)."""
  r, A = np.asarray(ratio_sg, np.float64), np.asarray(A, np.float64)
  if cap_mode == "relative":
    w = np.clip(r, 1 - eps_low, 1 + eps_high)
  elif cap_mode == "absolute":
    w = np.minimum(r, eps_high)
  else:
    raise ValueError(f"unknown cap_mode {cap_mode!r}")
  keep = np.ones(r.shape)
  if trust_mask:
    drop = ((A > 0) & (r > 1 + eps_high)) | ((A < 0) & (r < 1 - eps_low))
    keep = np.where(drop, 0.0, 1.0)
  return w, keep, w != r


def mismatch_weights(kind, old_logp, rollout_logp, mask, *, level="token", tis_cap=2.0, mis_low=0.5,
                     mis_high=2.0):
  """TIS: min(k, tis_cap); MIS: k 1[mis_low <= k <= mis_high]; k = exp(old - rollout) per token (level='token')
  or K_i = exp(sum_t m (old - rollout)) broadcast (level='sequence')."""
  mb = np.asarray(mask) != 0
  d = np.where(mb, np.asarray(old_logp, np.float64) - np.asarray(rollout_logp, np.float64), 0.0)
  if level == "token":
    k = np.exp(d)
  elif level == "sequence":
    k = np.exp(d.sum(axis=1))[:, None] * np.ones((1, d.shape[1]))
  else:
    raise ValueError(f"unknown level {level!r}")
  if kind == "tis":
    w = np.minimum(k, tis_cap)
  elif kind == "mis":
    w = np.where((k >= mis_low) & (k <= mis_high), k, 0.0)
  else:
    raise ValueError(f"unknown kind {kind!r}")
  return np.where(mb, w, 0.0)


def sentence_segment_ids(token_ids, mask, delimiter_ids):
  """id_t = number of valid delimiter tokens strictly before t in the row (a delimiter ends its segment)."""
  tok = np.asarray(token_ids)
  mb = np.asarray(mask) != 0
  delims = set(int(d) for d in delimiter_ids)
  out = np.zeros(tok.shape, dtype=np.int64)
  for i in range(tok.shape[0]):
    count = 0
    for t in range(tok.shape[1]):
      out[i, t] = count
      if mb[i, t] and int(tok[i, t]) in delims:
        count += 1
  return out


def sspo_phi(seg_ids, mask, entropy, *, entropy_alpha=1.0, phi_min=0.5, phi_max=2.0):
  """phi per token: clip((Hbar_seg / mean over valid segments of Hbar)^alpha, phi_min, phi_max); 1 without entropy
  or when the batch mean is 0."""
  mb = np.asarray(mask) != 0
  B, T = mb.shape
  phi = np.ones((B, T))
  if entropy is None:
    return phi
  H = np.where(mb, np.asarray(entropy, np.float64), 0.0)
  segs = []
  for i in range(B):
    by_id = {}
    for t in range(T):
      if mb[i, t]:
        by_id.setdefault(int(seg_ids[i, t]), []).append(t)
    for ts in by_id.values():
      segs.append((i, ts, sum(H[i, t] for t in ts) / len(ts)))
  if not segs:
    return phi
  mean = sum(h for _, _, h in segs) / len(segs)
  if mean == 0:
    return phi
  for i, ts, h in segs:
    v = min(max((h / mean) ** entropy_alpha, phi_min), phi_max)
    for t in ts:
      phi[i, t] = v
  return phi


def gtpo_conflict_weights(token_ids, mask, advantages, group_size, *, conflict_weight=2.0):
  """GTPO conflict weights delta [B, T] and n_conf [B] (rows grouped contiguously, B = P * group_size).

  Raw conflict at position p with token v: v sits at p in >= 1 positive and >= 1 negative row of the group (p valid
  there). Forward positions are absolute; backward position q of a row is index last_valid - q (must be valid).
  A row's region is the maximal leading run of positions where its own token is a raw conflict. Rows with A = 0
  have no region (delta 1, n_conf 1). Weight: conflict_weight on positive rows, 0 on negative rows."""
  tok = np.asarray(token_ids)
  mb = np.asarray(mask) != 0
  A = np.where(mb.any(axis=1), np.asarray(advantages, np.float64), 0.0)
  B, T = mb.shape
  if group_size is None or group_size < 1 or B % group_size:
    raise ValueError(f"batch {B} is not a multiple of group_size {group_size}")
  delta = np.ones((B, T))
  n_conf = np.ones(B)

  def fwd_index(j, p):
    return p if p < T and mb[j, p] else None

  def bwd_index(j, q):
    valid = np.nonzero(mb[j])[0]
    if not valid.size:
      return None
    idx = int(valid[-1]) - q
    return idx if idx >= 0 and mb[j, idx] else None

  for g0 in range(0, B, group_size):
    rows = range(g0, g0 + group_size)
    pos = [j for j in rows if A[j] > 0]
    neg = [j for j in rows if A[j] < 0]
    if not pos or not neg:
      continue

    def raw(index, p, v):
      def has(js):
        for j in js:
          idx = index(j, p)
          if idx is not None and int(tok[j, idx]) == v:
            return True
        return False
      return has(pos) and has(neg)

    for i in pos + neg:
      w = conflict_weight if A[i] > 0 else 0.0
      region = {}
      for name, index in (("f", fwd_index), ("b", bwd_index)):
        run, p = [], 0
        while True:
          idx = index(i, p)
          if idx is None or not raw(index, p, int(tok[i, idx])):
            break
          run.append(idx)
          p += 1
        region[name] = run
      df, db = np.ones(T), np.ones(T)
      df[region["f"]] = w
      db[region["b"]] = w
      delta[i] = df * db
      n_conf[i] = max(1, len(set(region["f"]) | set(region["b"])))
  return np.where(mb, delta, 0.0), n_conf
