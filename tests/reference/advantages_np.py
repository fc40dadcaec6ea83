"""Float64 NumPy references for advantage estimators, written as the papers' code does it: Python
loops over groups, tokens and string tree ids, straight from the specification's procedures."""

import numpy as np


def grpo(r, eps=1e-6):
  r = np.asarray(r, np.float64)
  out = np.zeros_like(r)
  for p in range(r.shape[0]):
    g = r[p]
    if len(g) == 1:
      out[p] = g
    else:
      out[p] = (g - g.mean()) / (g.std(ddof=1) + eps)
  return out


def tempo(tokens, mask, r, eps=1e-6):
  """The official per-token procedure: walk each response, narrowing the set sharing its prefix."""
  tokens, mask, r = np.asarray(tokens), np.asarray(mask), np.asarray(r, np.float64)
  P, G, T = tokens.shape
  out = np.zeros((P, G, T))
  for p in range(P):
    mu, sd = r[p].mean(), r[p].std(ddof=1)
    for i in range(G):
      prev = list(range(G))
      for j in range(T):
        if mask[p, i, j] == 0:
          break
        branch = [k for k in prev if mask[p, k, j] and tokens[p, k, j] == tokens[p, i, j]]
        v_cur, v_next = r[p, prev].mean(), r[p, branch].mean()
        out[p, i, j] = (r[p, i] - mu + v_next - v_cur) / (sd + eps)
        if len(prev) == 1:
          for jj in range(j + 1, T):
            if mask[p, i, jj] == 0:
              break
            out[p, i, jj] = out[p, i, j]
          break
        prev = branch
  return out


def whiten(x, m):
  s = m.sum()
  mu = (x * m).sum() / s
  var = ((x - mu) ** 2 * m).sum() / s * s / (s - 1)
  return (x - mu) / np.sqrt(var + 1e-8) * m


def treepo(r, uids, mask, weighting="average"):
  """TreePO from string uids 'prompt#1-a#2-b...' exactly as the official estimator groups them."""
  r, mask = np.asarray(r, np.float64).reshape(-1), np.asarray(mask, np.float64).reshape(len(uids), -1)
  depth = max(u.count("#") for u in uids)
  seq = np.zeros(len(uids))
  for i, u in enumerate(uids):
    terms, sizes = [], []
    for d in range(depth):
      key = "#".join(u.split("#")[:d + 1])
      group = [k for k, v in enumerate(uids) if "#".join(v.split("#")[:d + 1]) == key]
      if d > 0 and len(group) <= 1:
        continue
      mean = 0.0 if (d == 0 and len(group) == 1) else r[group].mean()
      terms.append(r[i] - mean)
      sizes.append(len(group))
    terms, sizes = np.array(terms), np.array(sizes, np.float64)
    seq[i] = terms.mean() if weighting == "average" else (terms * sizes).sum() / sizes.sum()
  return whiten(seq[:, None] * mask, mask)


def reinforce_pp_baseline(r, mask):
  """OpenRLHF: group-centred reward on the last token, γ = 1 returns, population-variance normalisation."""
  r, mask = np.asarray(r, np.float64), np.asarray(mask, np.float64)
  P, G, T = mask.shape
  ret = np.zeros((P, G, T))
  for p in range(P):
    for g in range(G):
      s = r[p, g] - (r[p].mean() if G > 1 else 0.0)
      ret[p, g] = s * mask[p, g]
  n = mask.sum()
  mu = (ret * mask).sum() / n
  var = ((ret - mu) ** 2 * mask).sum() / n
  return (ret - mu) / np.sqrt(max(var, 1e-8)) * mask


def gae(r, values, mask, gamma, lam):
  """verl-style GAE (right-padded responses), then unbiased whitening over valid tokens."""
  P, G, T = mask.shape
  adv = np.zeros((P, G, T))
  for p in range(P):
    for g in range(G):
      L = int(mask[p, g].sum())
      rew = np.zeros(L)
      if L:
        rew[-1] = r[p, g]
      last = 0.0
      for t in reversed(range(L)):
        nv = values[p, g, t + 1] if t + 1 < L else 0.0
        delta = rew[t] + gamma * nv - values[p, g, t]
        last = delta + gamma * lam * last
        adv[p, g, t] = last
  returns = (adv + values) * mask
  return whiten(adv, mask), returns


def rloo(r):
  r = np.asarray(r, np.float64)
  out = np.zeros_like(r)
  for p in range(r.shape[0]):
    G = r.shape[1]
    for i in range(G):
      out[p, i] = r[p, i] if G == 1 else r[p, i] - sum(r[p, j] for j in range(G) if j != i) / (G - 1)
  return out


def ngrpo(r, r_max=1.0, k=1, eps=1e-6):
  r = np.asarray(r, np.float64)
  out = np.zeros_like(r)
  for p in range(r.shape[0]):
    aug = np.concatenate([r[p], [r_max] * k])
    out[p] = (r[p] - aug.mean()) / (aug.std(ddof=1) + eps)
  return out


def dcpo_visit(r, history):
  """SAS for one group given the list of earlier groups' rewards of the same prompt (all visits kept)."""
  r = np.asarray(r, np.float64)
  n = len(history) + 1
  mu_new, sd_new = r.mean(), r.std(ddof=1)
  a_new = (r - mu_new) / sd_new if sd_new > 0 else np.zeros_like(r)
  if n == 1:
    return a_new
  mu_old, sd_old = history[-1]
  mu_tot = ((n - 1) * mu_old + mu_new) / n
  sd_tot = np.sqrt(((n - 1) * sd_old ** 2 + sd_new ** 2 + (n - 1) / n * (mu_new - mu_old) ** 2) / n)
  a_tot = (r - mu_tot) / sd_tot if sd_tot > 0 else np.zeros_like(r)
  sa_new = a_tot / n + (1 - 1 / n) * a_new
  sa_tot = a_new / n + (1 - 1 / n) * a_tot
  return np.where(np.abs(sa_new) < np.abs(sa_tot), sa_new, sa_tot), (mu_tot, sd_tot)


def lp_reg(logp, proxy, adv, mask, frac=0.01):
  B, T = logp.shape
  neg = [(i, t) for i in range(B) for t in range(T) if mask[i, t] and adv[i] < 0]
  k = max(1, int(np.floor(frac * len(neg))))
  out = np.zeros((B, T))
  if k <= 1:
    return out
  for i, t in sorted(neg, key=lambda c: (logp[c], c[0] * T + c[1]))[:k]:
    if logp[i, t] < proxy[i, t]:
      out[i, t] = 1.0
  return out
