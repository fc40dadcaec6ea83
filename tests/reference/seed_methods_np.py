"""Float64 loop references for OPMD / AsymRE, DisCO and STEER, written from the formulas of the papers and
their official code (Trinity-RFT, DisCO, STEER), not from rl_jax.

Losses return a float. Stop-gradient quantities are computed from `frozen` (a copy of logp), so a central
finite difference of the loss w.r.t. logp with `frozen` held fixed is the gradient the objective must have.
"""

import math

import numpy as np


def rows(mask):
  return [[t for t in range(mask.shape[1]) if mask[i, t] > 0] for i in range(mask.shape[0])]


def token_mean(values, mask):
  n = sum(len(r) for r in rows(mask))
  return sum(values[i][t] for i, r in enumerate(rows(mask)) for t in r) / max(n, 1)


# ----------------------------------------------------------------------------- advantages

def opmd_advantages(rewards, baseline="mean", tau=1.0):
  out = np.zeros_like(rewards, dtype=np.float64)
  for p, group in enumerate(np.asarray(rewards, np.float64)):
    g = len(group)
    if g == 1:
      b = 0.0
    elif baseline == "mean":
      b = sum(group) / g
    else:
      b = tau * math.log(sum(math.exp(x / tau) for x in group) / g)
    out[p] = [x - b for x in group]
  return out


def asymre_advantages(rewards, baseline_shift=-0.1):
  out = np.zeros_like(rewards, dtype=np.float64)
  for p, group in enumerate(np.asarray(rewards, np.float64)):
    b = 0.0 if len(group) == 1 else sum(group) / len(group) + baseline_shift
    out[p] = [x - b for x in group]
  return out


# ----------------------------------------------------------------------------- objectives

def opmd(logp, adv, mask, *, tau=1.0):
  """token-mean of −A·log π / (1 + τ)."""
  vals = [[-adv[i] * logp[i, t] / (1.0 + tau) for t in range(logp.shape[1])] for i in range(logp.shape[0])]
  return token_mean(vals, mask)


def disco(logp, old, adv, mask, *, group_size, frozen, score="logL", tau=10.0, delta=1e-4, penalty=1e3,
          kl_type="k1"):
  """−(1/N_q) Σ_q [mean_pos s − τ log mean_neg exp(s/τ)] + max(β(KL − δ), 0)|_frozen · KL."""
  R = rows(mask)

  def seq_score(i):
    if not R[i]:
      return 0.0
    if score == "logL":
      return sum(logp[i, t] for t in R[i]) / len(R[i])
    return sum(math.exp(logp[i, t] - old[i, t]) for t in R[i]) / len(R[i])

  def kl(lp):
    def one(i, t):
      d = lp[i, t] - old[i, t]
      return -d if kl_type == "k1" else math.exp(d) - 1.0 - d
    vals = [[one(i, t) if mask[i, t] > 0 else 0.0 for t in range(lp.shape[1])] for i in range(lp.shape[0])]
    return token_mean(vals, mask)

  total, n_groups = 0.0, 0
  for start in range(0, logp.shape[0], group_size):
    members = range(start, start + group_size)
    if any(R[i] for i in members):
      n_groups += 1
    pos = [seq_score(i) for i in members if R[i] and adv[i] > 0]
    neg = [seq_score(i) for i in members if R[i] and adv[i] < 0]
    if not pos or not neg:
      continue
    if tau is None:
      neg_term = sum(neg) / len(neg)
    else:
      neg_term = tau * math.log(sum(math.exp(s / tau) for s in neg) / len(neg))
    total += sum(pos) / len(pos) - neg_term
  coef = max(penalty * (kl(frozen) - delta), 0.0)
  return -total / max(n_groups, 1) + coef * kl(logp)


def _ppo_dual_clip(r, a, eps_low, eps_high, c):
  loss = max(-a * r, -a * min(max(r, 1.0 - eps_low), 1.0 + eps_high))
  return min(loss, -a * c) if a < 0 else loss


def steer_weights(frozen, old, adv, entropy, mask, *, w_min=0.8, w_max=1.2, linear=True):
  omega = {}
  for i, r in enumerate(rows(mask)):
    for t in r:
      p = min(max(math.exp(frozen[i, t]), 1e-8), 1.0 - 1e-8)
      q = min(max(math.exp(old[i, t]), 1e-8), 1.0)
      omega[i, t] = abs(adv[i] / q * p * (1.0 - p) * (math.log(p) + entropy[i, t]))
  w = np.zeros(mask.shape)
  if not omega:
    return w
  lo, hi = min(omega.values()), max(omega.values())
  for key, o in omega.items():
    if linear:
      w[key] = (w_min + w_max) / 2 if hi == lo else min(max(w_max - (o - lo) * (w_max - w_min) / (hi - lo), w_min), w_max)
    else:
      k = -math.log(w_min) / max(hi, 0.02)
      w[key] = min(max(math.exp(-k * o), w_min), 1.0)
  return w


def steer(logp, old, adv, mask, *, entropy, frozen, w_min=0.8, w_max=1.2, linear=True, eps_low=0.2, eps_high=0.28,
          dual_clip_c=10.0):
  """token-mean of w_t · dual-clip PPO loss, w from the frozen policy."""
  w = steer_weights(frozen, old, adv, entropy, mask, w_min=w_min, w_max=w_max, linear=linear)
  vals = [[w[i, t] * _ppo_dual_clip(math.exp(logp[i, t] - old[i, t]), adv[i], eps_low, eps_high, dual_clip_c)
           if mask[i, t] > 0 else 0.0 for t in range(logp.shape[1])] for i in range(logp.shape[0])]
  return token_mean(vals, mask)


def finite_difference(loss_of_logp, logp, mask, h=1e-6):
  """Central differences of a float64 loss w.r.t. every valid logp entry (0 elsewhere)."""
  grad = np.zeros_like(logp, dtype=np.float64)
  for i in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      if mask[i, t] > 0:
        up, down = logp.copy(), logp.copy()
        up[i, t] += h
        down[i, t] -= h
        grad[i, t] = (loss_of_logp(up) - loss_of_logp(down)) / (2 * h)
  return grad


# ----------------------------------------------------------------------------- length / effort shaping

def kimi_length_reward(correct, lengths):
  out = np.zeros(np.shape(correct))
  for p in range(out.shape[0]):
    lo, hi = min(lengths[p]), max(lengths[p])
    for i in range(out.shape[1]):
      lam = 0.0 if hi == lo else 0.5 - (lengths[p][i] - lo) / (hi - lo)
      out[p, i] = lam if correct[p][i] > 0 else min(0.0, lam)
  return out


def grpo_lambda_rewards(correct, lengths, *, threshold=0.5, length_weight=1.0):
  lam = kimi_length_reward(correct, lengths)
  out = np.array(correct, np.float64)
  for p in range(out.shape[0]):
    if sum(correct[p]) / len(correct[p]) >= threshold:
      out[p] += length_weight * lam[p]
  return out


def ada_grpo_rewards(rewards, formats, *, step, total_steps):
  out = np.array(rewards, np.float64)
  G = out.shape[1]
  t = min(max(step, 0), total_steps)
  for p in range(out.shape[0]):
    for i in range(G):
      F = sum(1 for j in range(G) if formats[p][j] == formats[p][i])
      decay = F / G + 0.5 * (1 - F / G) * (1 + math.cos(math.pi * t / total_steps))
      out[p, i] *= (G / F) * decay
  return out


def effort_rewards(correct, lengths, effort, *, coef=1.0, reference_lengths=None):
  out = np.array(correct, np.float64)
  for p in range(out.shape[0]):
    ref = sum(lengths[p]) / len(lengths[p]) if reference_lengths is None else reference_lengths[p]
    target = max(effort[p] * ref, 1.0)
    for i in range(out.shape[1]):
      out[p, i] -= coef * max(0.0, lengths[p][i] / target - 1.0)
  return out


def llds(logp, old, adv, mask, *, frozen, llds_coef=0.2, gate="action", eps_low=0.2, eps_high=0.2):
  """token-mean PPO-clip + λ·token-mean(max(0, old − logp)) over tokens with A ≥ 0 whose unit lost likelihood
  at `frozen`: units are runs of consecutive kept tokens ("action") or the whole response ("response")."""
  R = rows(mask)
  pg, reg = 0.0, 0.0
  for i, r in enumerate(R):
    a = lambda t: adv[i] if np.ndim(adv) == 1 else adv[i, t]
    kept = [t for t in r if a(t) >= 0]
    units, cur = [], []
    for t in range(logp.shape[1]):                      # split kept tokens into runs of consecutive positions
      if t in kept:
        cur.append(t)
      elif cur:
        units.append(cur)
        cur = []
    if cur:
      units.append(cur)
    if gate == "response":
      units = [kept]
    for unit in units:
      if sum(old[i, t] - frozen[i, t] for t in unit) > 0:
        reg += sum(max(0.0, old[i, t] - logp[i, t]) for t in unit)
    for t in r:
      ratio = math.exp(logp[i, t] - old[i, t])
      pg += max(-a(t) * ratio, -a(t) * min(max(ratio, 1 - eps_low), 1 + eps_high))
  n = max(sum(len(r) for r in R), 1)
  return pg / n + llds_coef * reg / n


def tw_grpo_weights(vocab_logp, mask, *, group_size, max_weight=1.7):
  """Per group and position: mean over rows of Σ_v (e^d − d − 1), d = clip(mean_rows(log p) − log p, ±11),
  masked positions read as the uniform distribution; min-max normalised over positions to [1, α]."""
  B, T, V = vocab_logp.shape
  w = np.zeros((B, T))
  for g0 in range(0, B, group_size):
    rows_ = range(g0, g0 + group_size)
    x = {(i, t): ([vocab_logp[i, t, v] for v in range(V)] if mask[i, t] > 0 else [-math.log(V)] * V)
         for i in rows_ for t in range(T)}
    div = []
    for t in range(T):
      mean = [sum(x[i, t][v] for i in rows_) / group_size for v in range(V)]
      total = 0.0
      for i in rows_:
        for v in range(V):
          d = min(max(mean[v] - x[i, t][v], -11.0), 11.0)
          total += math.exp(d) - d - 1.0
      div.append(total / group_size)
    lo, hi = min(div), max(div)
    for i in rows_:
      for t in range(T):
        w[i, t] = (1 + (max_weight - 1) * (div[t] - lo) / (hi - lo + 1e-8)) * (mask[i, t] > 0)
  return w


def zoom_zero(shared, span_reward, outside_reward, span_start, span_end, mask, *, scale=1 / 3, eps=1e-6):
  """Per group: token scores (S + answer reward inside [a, b) or IoU reward outside)·scale, normalised by
  the mean and unbiased std over every valid token of the group."""
  P, G, T = mask.shape
  out = np.zeros((P, G, T))
  for p in range(P):
    scores = {}
    for i in range(G):
      for t in range(T):
        if mask[p, i, t] > 0:
          facet = span_reward[p][i] if span_start[p][i] <= t < span_end[p][i] else outside_reward[p][i]
          scores[i, t] = scale * (shared[p][i] + facet)
    vals = list(scores.values())
    if G == 1:
      mu, sd = 0.0, 1.0
    else:
      mu = sum(vals) / len(vals) if vals else 0.0
      sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / max(len(vals) - 1, 1)) if vals else 0.0
    for key, v in scores.items():
      out[(p,) + key] = (v - mu) / (sd + eps)
  return out


# ----------------------------------------------------------------------------- SPINE

def spine(logp, old, adv, mask, *, entropy, frozen, rho=0.2, h_low=0.3, h_high=2.0, band_coef=0.01, eps_low=0.2,
          eps_high=0.2):
  """Sum over forking tokens (the top ceil(rho*N) valid entropies, ties kept) of the PPO-clip loss plus
  c*side*(-(frozen + H)*logp), divided by all N valid tokens."""
  R = rows(mask)
  valid = sorted((entropy[i, t] for i, r in enumerate(R) for t in r), reverse=True)
  n = len(valid)
  k = max(1, math.ceil(rho * n - 1e-9))
  tau = valid[k - 1] if n else math.inf
  total = 0.0
  for i, r in enumerate(R):
    for t in r:
      h = entropy[i, t]
      if h < tau:
        continue
      a = adv[i] if np.ndim(adv) == 1 else adv[i, t]
      ratio = math.exp(logp[i, t] - old[i, t])
      pg = max(-a * ratio, -a * min(max(ratio, 1 - eps_low), 1 + eps_high))
      side = 1.0 if h > h_high else (-1.0 if h < h_low else 0.0)
      total += pg + band_coef * side * (-(frozen[i, t] + h) * logp[i, t])
  return total / max(n, 1)


# ----------------------------------------------------------------------------- HAPO adaptive temperature

def entropy_temperature_factor(logits, stats, tau):
  """Per row: 1 + tau*clip(h*k_pos if h > 0 else h*k_neg, -1, 1), h = (log H - m)/(s + 1e-6)."""
  m, s, k_pos, k_neg = stats
  out = []
  for row in np.asarray(logits, np.float64):
    p = np.exp(row - row.max())
    p /= p.sum()
    h_ent = -sum(q * math.log(q) for q in p if q > 0)
    h = (math.log(max(h_ent, 1e-6)) - m) / (s + 1e-6)
    out.append(1 + tau * min(1.0, max(-1.0, h * (k_pos if h > 0 else k_neg))))
  return np.array(out)


def entropy_temperature_stats(entropy, mask, pivot=0.8):
  e = sorted(math.log(max(entropy[i, t], 1e-8)) for i, r in enumerate(rows(mask)) for t in r)
  q = e[int(round(pivot * (len(e) - 1)))]
  scale = math.sqrt(sum((x - q) ** 2 for x in e) / len(e))
  h = [(x - q) / scale for x in e]
  return np.array([q, scale, 1 / max(h), 1 / -min(h)])


# ----------------------------------------------------------------------------- GCPO

def gcpo_rewards(correct, uses_aux, lengths, *, margin=0.05, aux_weight=1.0, length_weight=0.0, max_len=1.0):
  out = np.zeros_like(np.asarray(correct, np.float64))
  for p in range(len(correct)):
    with_aux = [c for c, a in zip(correct[p], uses_aux[p]) if a]
    without = [c for c, a in zip(correct[p], uses_aux[p]) if not a]
    delta = (sum(with_aux) / len(with_aux) - sum(without) / len(without)) if with_aux and without else 0.0
    sign = 1.0 if delta > margin else (-1.0 if delta < -margin else 0.0)
    for i, (c, a, n) in enumerate(zip(correct[p], uses_aux[p], lengths[p])):
      out[p, i] = c + aux_weight * sign * a + length_weight * min(n / max_len, 1.0) * c
  return out


def hapo_tlga(rewards, mask, *, eps=1e-6, fallback=5.0, check_padding=True):
  """Per group: token-weighted mean/std (ddof 0) of R over valid tokens; GRPO (unbiased std) when any
  |A| >= fallback (padding included when check_padding, where the score is 0)."""
  P, G, T = mask.shape
  out = np.zeros((P, G, T))
  for p in range(P):
    vals = [rewards[p, i] for i in range(G) for t in range(T) if mask[p, i, t] > 0]
    mu = sum(vals) / max(len(vals), 1)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / max(len(vals), 1))
    a = np.array([[((rewards[p, i] if mask[p, i, t] > 0 else 0.0) - mu) / (sd + eps) for t in range(T)]
                  for i in range(G)])
    tested = a if check_padding else a * (mask[p] > 0)
    if np.any(np.abs(tested) >= fallback):
      r = rewards[p]
      a = np.repeat(((r - r.mean()) / (r.std(ddof=1) + eps))[:, None], T, axis=1)
    out[p] = a * (mask[p] > 0)
  return out


# ----------------------------------------------------------------------------- OTR

def otr_surrogate(logits, candidates, targets, mask, *, neg_reward=0.0, baseline=True):
  total, n = 0.0, 0
  for b in range(logits.shape[0]):
    for t in range(logits.shape[1]):
      if mask[b, t] <= 0:
        continue
      z = logits[b, t] - logits[b, t].max()
      logp = z - math.log(np.exp(z).sum())
      r = [1.0 if a == targets[b, t] else neg_reward for a in candidates[b, t]]
      base = sum(r) / len(r) if baseline else 0.0
      total += -sum((rk - base) * logp[a] for rk, a in zip(r, candidates[b, t])) / len(r)
      n += 1
  return total / max(n, 1)
