"""Shared float64 NumPy pieces for the objective references: input cleaning, aggregation, KL estimators,
the PPO-clip token loss, segment ratios, and the final assembly of (loss, grad, metrics).

Conventions: arrays [B, T]; mask != 0 marks valid tokens; every input is replaced by 0 at masked positions
before any arithmetic, so NaN/garbage there never reaches a result. Gradients are d loss / d logp, written out
by hand; stop-gradient terms are computed from `sg_logp` (the value of logp at which they are frozen).
"""

import math

import numpy as np

DELTA_CLAMP = 20.0
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def _f(x):
  return np.asarray(x, dtype=np.float64)


class Inputs:
  """Cleaned inputs. m: float mask, mb: bool mask, lp/old/ref: logp arrays (0 where masked), A: token advantages,
  L: row lengths, n_seq: max(1, #rows with L > 0), lp_sg: logp used inside stop-gradients."""

  def __init__(self, logp, old_logp, advantages, mask, ref_logp=None, sg_logp=None, adv_rank=None):
    mask = np.asarray(mask)
    if mask.ndim != 2:
      raise ValueError(f"mask must be [B, T], got shape {mask.shape}")
    self.B, self.T = mask.shape
    self.mb = mask != 0
    self.m = self.mb.astype(np.float64)
    self.lp = self.clean(logp, "logp")
    self.old = self.clean(old_logp, "old_logp")
    self.ref = None if ref_logp is None else self.clean(ref_logp, "ref_logp")
    self.lp_sg = self.lp if sg_logp is None else self.clean(sg_logp, "sg_logp")
    self.L = self.m.sum(axis=1)
    self.n_seq = max(1.0, float((self.L > 0).sum()))
    A = _f(advantages)
    if adv_rank is not None and A.ndim != adv_rank:
      raise ValueError(f"advantages must have rank {adv_rank}, got shape {A.shape}")
    if A.shape == (self.B,):
      self.A_seq = np.where(self.L > 0, A, 0.0)
      self.A = np.where(self.mb, self.A_seq[:, None] * np.ones((1, self.T)), 0.0)
    elif A.shape == (self.B, self.T):
      self.A_seq = None
      self.A = np.where(self.mb, A, 0.0)
    else:
      raise ValueError(f"advantages must be [B] or [B, T], got shape {A.shape}")

  def clean(self, x, name="array"):
    x = _f(x)
    if x.shape != (self.B, self.T):
      raise ValueError(f"{name} must have shape {(self.B, self.T)}, got {x.shape}")
    return np.where(self.mb, x, 0.0)

  def clean_int(self, x, name="ids"):
    x = np.asarray(x)
    if x.shape != (self.B, self.T):
      raise ValueError(f"{name} must have shape {(self.B, self.T)}, got {x.shape}")
    return np.where(self.mb, x, 0).astype(np.int64)


def token_ratio(lp, old):
  """r = exp(clip(lp - old, -20, 20)) and dr/dlp (0 where the clamp is active)."""
  d = lp - old
  r = np.exp(np.clip(d, -DELTA_CLAMP, DELTA_CLAMP))
  inside = (d > -DELTA_CLAMP) & (d < DELTA_CLAMP)
  return r, np.where(inside, r, 0.0)


# ----------------------------------------------------------------------------- aggregation

def agg_weights(mask, agg, max_len=None):
  """Weights W [B, T] with agg(l) = sum(W * l) for the four linear aggregation modes."""
  m = (np.asarray(mask) != 0).astype(np.float64)
  L = m.sum(axis=1)
  n_seq = max(1.0, float((L > 0).sum()))
  if agg == "token-mean":
    return m / max(1.0, m.sum())
  if agg == "seq-mean-token-mean":
    return m / np.maximum(L, 1.0)[:, None] / n_seq
  if agg == "seq-mean-token-sum":
    return m / n_seq
  if agg == "seq-mean-token-sum-norm":
    if max_len is None or not max_len > 0:
      raise ValueError("agg='seq-mean-token-sum-norm' needs max_len > 0")
    return m / (n_seq * float(max_len))
  raise ValueError(f"unknown agg {agg!r}; expected one of {AGG_MODES}")


def aggregate(loss_tok, mask, agg, max_len=None):
  """Loop form of the aggregation (used to check agg_weights)."""
  m = np.asarray(mask) != 0
  B, T = m.shape
  if agg == "token-mean":
    tot, n = 0.0, 0
    for i in range(B):
      for t in range(T):
        if m[i, t]:
          tot += float(loss_tok[i, t])
          n += 1
    return tot / max(1, n)
  rows = []
  for i in range(B):
    vals = [float(loss_tok[i, t]) for t in range(T) if m[i, t]]
    if vals:
      rows.append(vals)
  n_seq = max(1, len(rows))
  if agg == "seq-mean-token-mean":
    return sum(sum(v) / len(v) for v in rows) / n_seq
  if agg == "seq-mean-token-sum":
    return sum(sum(v) for v in rows) / n_seq
  if agg == "seq-mean-token-sum-norm":
    if max_len is None or not max_len > 0:
      raise ValueError("agg='seq-mean-token-sum-norm' needs max_len > 0")
    return sum(sum(v) for v in rows) / (n_seq * max_len)
  raise ValueError(f"unknown agg {agg!r}; expected one of {AGG_MODES}")


# ----------------------------------------------------------------------------- KL estimators

def kl_k1(logp, ref_logp):
  """k1 = logp - ref_logp; d/dlogp = 1."""
  lp, ref = _f(logp), _f(ref_logp)
  return lp - ref, np.ones_like(lp)


def kl_k2(logp, ref_logp):
  """k2 = 0.5 x^2 with x = ref_logp - logp; d/dlogp = -x."""
  x = _f(ref_logp) - _f(logp)
  return 0.5 * x * x, -x


def kl_k3(logp, ref_logp):
  """k3 = exp(x) - x - 1, x = ref_logp - logp clamped to [-20, 20], value clamped to [-10, 10] (verl low_var_kl)."""
  x = _f(ref_logp) - _f(logp)
  xc = np.clip(x, -DELTA_CLAMP, DELTA_CLAMP)
  v = np.exp(xc) - xc - 1.0
  vc = np.clip(v, -10.0, 10.0)
  live = (x > -DELTA_CLAMP) & (x < DELTA_CLAMP) & (v > -10.0) & (v < 10.0)
  return vc, np.where(live, 1.0 - np.exp(xc), 0.0)


def kl_estimate(name, logp, ref_logp):
  fns = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
  if name not in fns:
    raise ValueError(f"unknown kl_estimator {name!r}; expected one of {KL_ESTIMATORS}")
  return fns[name](logp, ref_logp)


# ----------------------------------------------------------------------------- PPO clip

def ppo_clip_token(ratio, A, lo, hi, dual_clip_c=None):
  """l = max(-A r, -A clip(r, lo, hi)); for A < 0 and dual_clip_c: l = min(l, -A c).
  Returns (l, dl/dratio with constant bounds, active) where active = clipped or dual-clipped branch strictly chosen."""
  unclipped = -A * ratio
  clipped = -A * np.clip(ratio, lo, hi)
  active = clipped > unclipped
  ell = np.where(active, clipped, unclipped)
  g = np.where(active, 0.0, -A)
  if dual_clip_c is not None:
    cap = -A * dual_clip_c
    dual = (A < 0) & (cap < ell)
    ell = np.where(dual, cap, ell)
    g = np.where(dual, 0.0, g)
    active = active | dual
  return ell, g, active


# ----------------------------------------------------------------------------- segment ratios

def segment_ratio(lp, old, mb, seg_ids):
  """rho_t = exp(mean over the valid tokens of t's segment of (lp - old)); segments = equal ids within a row.
  No clamp. Returns (rho [B, T], vjp) with vjp(G)[u] = sum_{t in seg(u)} G_t rho_t / |seg(u)| for valid u."""
  B, T = mb.shape
  rho = np.ones((B, T))
  members = []
  for i in range(B):
    segs = {}
    for t in range(T):
      if mb[i, t]:
        segs.setdefault(int(seg_ids[i, t]), []).append(t)
    for ts in segs.values():
      val = math.exp(sum(lp[i, t] - old[i, t] for t in ts) / len(ts))
      for t in ts:
        rho[i, t] = val
      members.append((i, ts, val))

  def vjp(G):
    out = np.zeros((B, T))
    for i, ts, val in members:
      c = sum(G[i, t] for t in ts) * val / len(ts)
      for t in ts:
        out[i, t] = c
    return out

  return rho, vjp


# ----------------------------------------------------------------------------- assembly

def finish(x, ell, vjp, ratio, active, *, agg, max_len, beta, kl_estimator, token_weight=None, extra=None):
  """loss = agg(w * l) + beta * agg(kl); grad = vjp(W * w) + beta * W * dkl; metrics."""
  if beta < 0:
    raise ValueError(f"beta must be >= 0, got {beta}")
  W = agg_weights(x.mb, agg, max_len)
  w = np.ones((x.B, x.T)) if token_weight is None else x.clean(token_weight, "token_weight")
  ell = np.where(x.mb, ell, 0.0)
  loss = float((W * w * ell).sum())
  grad = vjp(W * w)
  metrics = base_metrics(x, ratio, active)
  if beta > 0:
    if x.ref is None:
      raise ValueError("beta > 0 needs ref_logp")
    kl, dkl = kl_estimate(kl_estimator, x.lp, x.ref)
    kl_agg = float((W * kl).sum())
    loss += beta * kl_agg
    grad = grad + beta * W * dkl
    metrics["kl"] = kl_agg
  elif kl_estimator not in KL_ESTIMATORS:
    raise ValueError(f"unknown kl_estimator {kl_estimator!r}")
  if extra:
    metrics.update(extra)
  return loss, np.where(x.mb, grad, 0.0), metrics


def base_metrics(x, ratio, active):
  n = x.m.sum()
  valid_ratio = np.asarray(ratio)[x.mb]
  return {
      "clip_frac": float((np.asarray(active) & x.mb).sum() / max(1.0, n)),
      "ratio_mean": float(valid_ratio.sum() / max(1.0, n)),
      "ratio_max": float(valid_ratio.max()) if valid_ratio.size else 0.0,
  }
