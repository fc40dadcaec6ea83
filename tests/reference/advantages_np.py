"""Float64 NumPy loop references for rl_jax's advantage estimators.

Written as plain Python loops over groups, tokens and tree nodes, straight from the procedures of the
specification, so that the vectorized JAX versions can be compared against them.

Layout conventions (all functions):
  rewards  float [P, G]     P prompts x G samples per prompt.
  tokens   int   [P, G, T]  response token ids, right padded.
  mask     {0,1} [P, G, T]  1 = trainable response token.
Sequence-level estimators return [P, G]; token-level estimators return [P, G, T] (zero where mask == 0).
All outputs are float64 NumPy arrays.
"""

import math

import numpy as np


def _f(x):
  return np.asarray(x, dtype=np.float64)


def _check_rank(name, x, rank):
  if x.ndim != rank:
    raise ValueError(f"{name} must have rank {rank}, got shape {x.shape}")


def whiten(x, m):
  """verl masked_whiten over all entries with m == 1 (unbiased variance, rsqrt(var + 1e-8))."""
  x, m = _f(x), _f(m)
  s = m.sum()
  if s <= 1:
    raise ValueError("whiten needs at least two valid entries")
  mu = (x * m).sum() / s
  var = ((x - mu) ** 2 * m).sum() / s * s / (s - 1)
  return (x - mu) / math.sqrt(var + 1e-8)


def _last_valid(row_mask):
  idx = np.nonzero(row_mask)[0]
  return int(idx[-1]) if len(idx) else -1


# ---------------------------------------------------------------- GRPO family (sequence level)

def grpo(rewards, *, eps=1e-6, std_ddof=1, norm_by_std=True):
  """A_i = (r_i - mean_g r) / (std_g r + eps). G == 1: verl convention mean 0, std 1 (A = r)."""
  r = _f(rewards)
  _check_rank("rewards", r, 2)
  out = np.zeros_like(r)
  for p in range(r.shape[0]):
    g = r[p]
    if len(g) == 1:
      mu, sd = 0.0, 1.0
    else:
      mu, sd = g.mean(), g.std(ddof=std_ddof)
    for i in range(len(g)):
      out[p, i] = (g[i] - mu) / (sd + eps) if norm_by_std else g[i] - mu
  return out


def dr_grpo(rewards):
  """A_i = r_i - mean_g r (no std). G == 1: mean 0 (A = r)."""
  return grpo(rewards, norm_by_std=False)


def rloo(rewards):
  """A_i = r_i - mean_{j != i} r_j. G == 1: A = r (verl)."""
  r = _f(rewards)
  _check_rank("rewards", r, 2)
  out = np.zeros_like(r)
  P, G = r.shape
  for p in range(P):
    for i in range(G):
      others = [r[p, j] for j in range(G) if j != i]
      out[p, i] = r[p, i] - (sum(others) / len(others) if others else 0.0)
  return out


def ngrpo(rewards, *, max_reward=1.0, add_max_reward_num=1, eps=1e-6):
  """Statistics over the group plus add_max_reward_num virtual samples of reward max_reward (unbiased std).

  G == 1: no virtual sample, mean 0, std 1 (A = r)."""
  r = _f(rewards)
  _check_rank("rewards", r, 2)
  out = np.zeros_like(r)
  for p in range(r.shape[0]):
    g = list(r[p])
    if len(g) == 1:
      out[p] = (r[p] - 0.0) / (1.0 + eps)
      continue
    aug = np.array(g + [max_reward] * add_max_reward_num)
    mu, sd = aug.mean(), aug.std(ddof=1)
    for i in range(len(g)):
      out[p, i] = (g[i] - mu) / (sd + eps)
  return out


def s_grpo(correct):
  """S-GRPO serial group: correct bool [P, M], members ordered by exit position (earliest first).

  r_k = 2^-(N_right - 1) if member k is correct (N_right = correct members at or before k) else 0;
  A_k = r_k - mean(r). Returns [P, M]."""
  c = np.asarray(correct).astype(bool)
  _check_rank("correct", c, 2)
  out = np.zeros(c.shape)
  for p in range(c.shape[0]):
    n_right, r = 0, []
    for k in range(c.shape[1]):
      if c[p, k]:
        n_right += 1
        r.append(1.0 / 2 ** (n_right - 1))
      else:
        r.append(0.0)
    out[p] = np.array(r) - np.mean(r)
  return out


def seed_grpo(rewards, answer_ids, *, alpha, eps=1e-6):
  """SEED-GRPO with linear f: A_i = grpo(r)_i * (1 - alpha * SE / log G).

  answer_ids int [P, G]: semantic cluster id of each answer (equal id = same cluster).
  SE = -sum_c p_c log p_c with p_c = |C_c| / G. alpha has no pinned default (required). G == 1: factor 1."""
  a = grpo(rewards, eps=eps)
  ids = np.asarray(answer_ids)
  out = np.zeros_like(a)
  P, G = a.shape
  for p in range(P):
    counts = {}
    for i in range(G):
      counts[int(ids[p, i])] = counts.get(int(ids[p, i]), 0) + 1
    se = -sum((c / G) * math.log(c / G) for c in counts.values())
    factor = 1.0 if G == 1 else 1.0 - alpha * se / math.log(G)
    out[p] = a[p] * factor
  return out


# ---------------------------------------------------------------- REINFORCE++ / GAE (token level)

def reinforce_pp(rewards, mask, *, kl=None, beta=0.0, gamma=1.0, std_norm=True):
  """REINFORCE++ (OpenRLHF): rew[t] = -beta*clip(kl[t], -10, 10) + 1[t = last valid] r; returns
  G[t] = sum_{t' >= t} gamma^(t'-t) rew[t'] (within the row, valid tokens only); then global normalization
  over all valid tokens of the batch: (G - mu) / sqrt(max(var_population, 1e-8)). kl: [P, G, T] or None."""
  r, m = _f(rewards), _f(mask)
  P, G, T = m.shape
  k = np.zeros_like(m) if kl is None else np.clip(_f(kl), -10.0, 10.0)
  ret = np.zeros_like(m)
  for p in range(P):
    for i in range(G):
      last = _last_valid(m[p, i])
      acc = 0.0
      for t in range(T - 1, -1, -1):
        if m[p, i, t] == 0:
          continue
        rew = -beta * k[p, i, t] + (r[p, i] if t == last else 0.0)
        acc = rew + gamma * acc
        ret[p, i, t] = acc
  vals = [ret[idx] for idx in np.ndindex(m.shape) if m[idx] == 1]
  if not vals:
    return np.zeros_like(m)
  mu = sum(vals) / len(vals)
  var = sum((v - mu) ** 2 for v in vals) / len(vals)
  out = (ret - mu) / math.sqrt(max(var, 1e-8)) if std_norm else ret - mu
  return out * m


def reinforce_pp_baseline(rewards, mask, *, style="verl", kl=None, beta=0.0):
  """REINFORCE++-baseline on group-centred rewards (G == 1: mean 0).

  style "verl" (verl with the KL in the reward): s = r - beta * sum_t mask*kl (no clamp), c = s - mean_g s,
  whiten(broadcast(c), mask) * mask (unbiased variance, rsqrt(var + 1e-8)).
  style "openrlhf": c = r - mean_g r, reinforce_pp(c, mask, kl=kl, beta=beta, gamma=1) (KL per token, clamped to
  +-10, population variance, rsqrt(max(var, 1e-8))).
  style "openrlhf_verl_whiten": the openrlhf returns, whitened as verl. Without KL "verl" and "openrlhf" differ by
  sqrt(S/(S-1)) (S = valid tokens)."""
  r, m = _f(rewards), _f(mask)
  if style in ("openrlhf", "openrlhf_verl_whiten"):
    out = reinforce_pp(dr_grpo(r), m, kl=kl, beta=beta, gamma=1.0, std_norm=False)   # centred returns
    if style == "openrlhf_verl_whiten":
      return whiten(out, m) * m
    return reinforce_pp(dr_grpo(r), m, kl=kl, beta=beta, gamma=1.0)
  if style != "verl":
    raise ValueError(f"unknown style {style!r}")
  s = r.copy()
  if kl is not None:
    k = _f(kl)
    for p, i in np.ndindex(r.shape):
      s[p, i] -= beta * sum(k[p, i, t] for t in range(m.shape[2]) if m[p, i, t] == 1)
  c = dr_grpo(s)
  return whiten(c[:, :, None] * m, m) * m


def gae(rewards, values, mask, *, kl=None, beta=0.0, gamma=1.0, lam=1.0, whiten_advantages=True):
  """PPO GAE (verl, mask-aware): rew[t] = -beta*kl[t] + 1[t = last valid] r;
  delta_t = rew_t + gamma V_next - V_t, A_t = delta_t + gamma lam A_next, where V_next / A_next come from the next
  VALID token (0 past the end; masked tokens are skipped). returns = A + V (unwhitened A).
  Advantages whitened over mask (verl) if whiten_advantages. Returns (advantages, returns), both [P, G, T] * mask."""
  r, v, m = _f(rewards), _f(values), _f(mask)
  P, G, T = m.shape
  k = np.zeros_like(m) if kl is None else _f(kl)
  adv = np.zeros_like(m)
  for p in range(P):
    for i in range(G):
      last = _last_valid(m[p, i])
      next_v, next_a = 0.0, 0.0
      for t in range(T - 1, -1, -1):
        if m[p, i, t] == 0:
          continue
        rew = -beta * k[p, i, t] + (r[p, i] if t == last else 0.0)
        delta = rew + gamma * next_v - v[p, i, t]
        next_a = delta + gamma * lam * next_a
        adv[p, i, t] = next_a
        next_v = v[p, i, t]
  returns = (adv + v) * m
  if whiten_advantages:
    adv = whiten(adv, m)
  return adv * m, returns


# ---------------------------------------------------------------- DCPO smooth advantage standardization

def dcpo(rewards, prompt_ids, state, *, user_old_mean_ratio=1.0):
  """DCPO SAS (lime-RL/DCPO code form). State in / state out.

  prompt_ids: [P] hashable ids (must be distinct within one call).
  state: dict prompt_id -> (n_prev, mean, std): number of previous visits and the cumulative mean / std after them
  (missing id = first visit). Visit n = n_prev + 1. With (mu_new, sd_new) the current group's mean / unbiased std,
  mu_old, sd_old scaled by user_old_mean_ratio:
    mu_tot = ((n-1) mu_old + mu_new) / n
    var_tot = [(n-1) sd_old^2 + sd_new^2 + ((n-1)/n)(mu_new - mu_old)^2] / n   (n = 1: mu_new, sd_new)
    A_new = (R - mu_new)/sd_new if sd_new > 0 else 0;  A_tot likewise with tot (no eps)
    SA_new = A_tot/n + (1-1/n) A_new;  SA_tot = A_new/n + (1-1/n) A_tot;  A = SA_new if |SA_new| < |SA_tot| else SA_tot.
  Returns (advantages [P, G], new_state dict) where new_state[id] = (n, mu_tot, sd_tot); the input dict is not mutated."""
  r = _f(rewards)
  _check_rank("rewards", r, 2)
  ids = list(prompt_ids)
  if len(set(ids)) != len(ids) or len(ids) != r.shape[0]:
    raise ValueError("prompt_ids must be P distinct ids")
  new_state = dict(state)
  out = np.zeros_like(r)
  for p, pid in enumerate(ids):
    g = r[p]
    mu_new = g.mean()
    sd_new = g.std(ddof=1) if len(g) > 1 else 0.0
    n_prev, mu_old, sd_old = state.get(pid, (0, 0.0, 0.0))
    n = n_prev + 1
    if n == 1:
      mu_tot, sd_tot = mu_new, sd_new
    else:
      mu_old, sd_old = mu_old * user_old_mean_ratio, sd_old * user_old_mean_ratio
      mu_tot = ((n - 1) * mu_old + mu_new) / n
      var_tot = ((n - 1) * sd_old ** 2 + sd_new ** 2 + (n - 1) / n * (mu_new - mu_old) ** 2) / n
      sd_tot = math.sqrt(var_tot)
    for i in range(len(g)):
      a_new = (g[i] - mu_new) / sd_new if sd_new > 0 else 0.0
      a_tot = (g[i] - mu_tot) / sd_tot if sd_tot > 0 else 0.0
      sa_new = a_tot / n + (1 - 1 / n) * a_new
      sa_tot = a_new / n + (1 - 1 / n) * a_tot
      out[p, i] = sa_new if abs(sa_new) < abs(sa_tot) else sa_tot
    new_state[pid] = (n, mu_tot, sd_tot)
  return out, new_state


# ---------------------------------------------------------------- single-stream SPO (Xu & Ding)

def single_stream_advantages(rewards, p_hat, *, eps=1e-8):
  """a_i = r_i - p_hat_i, then global batch normalization (a - mean) / (std_u(a) + eps). rewards, p_hat: [B] -> [B]."""
  a = _f(rewards) - _f(p_hat)
  if a.ndim != 1 or a.shape[0] < 2:
    raise ValueError("single_stream_advantages needs a [B] batch with B >= 2")
  return (a - a.mean()) / (a.std(ddof=1) + eps)


def single_stream_init(successes, n_offline, *, rho_min=0.875):
  """Offline tracker init: N_init = 1/(1-rho_min); alpha0 = N_init (k+0.5)/(Neff+1), beta0 = N_init (Neff-k+0.5)/(Neff+1);
  Neff == 0 -> (0.5, 0.5). Scalars in, (alpha0, beta0) out."""
  if n_offline == 0:
    return 0.5, 0.5
  n_init = 1.0 / (1.0 - rho_min)
  return (n_init * (successes + 0.5) / (n_offline + 1), n_init * (n_offline - successes + 0.5) / (n_offline + 1))


def single_stream_rho(d, *, d_half=0.06, rho_min=0.875, rho_max=0.96):
  """KL-adaptive discount rho = clip(2^(-D / d_half), rho_min, rho_max). Scalar in, scalar out."""
  return min(max(2.0 ** (-d / d_half), rho_min), rho_max)


def single_stream_update(alpha, beta, reward, rho):
  """Beta tracker update: alpha <- rho alpha + r, beta <- rho beta + (1 - r). Returns (alpha, beta)."""
  return rho * alpha + reward, rho * beta + (1.0 - reward)


def single_stream_weights(p_hat, *, floor=0.05):
  """Prioritized sampling probabilities: w = sqrt(p (1 - p)) + floor, P = w / sum w. p_hat [M] -> [M]."""
  w = np.array([math.sqrt(p * (1 - p)) + floor for p in _f(p_hat)])
  return w / w.sum()


# ---------------------------------------------------------------- BRPO (AnytimeReasoner)

def brpo(rbar, prior, *, baseline="brpo", discount=2.0):
  """Thinking-segment advantages. rbar [P, G, S] (mean summary score after budget j), prior [S] (normalized inside).

  ret = sum_{j>=s} p_j rbar[g,j]; V2 = mean_g' of the same sum (0 if G == 1);
  V1 = [sum_{j<s} discount^j rbar[g,j] / sum_{j<s} discount^j] * sum_{j>=s} p_j (0 for s == 0);
  b = (s V1 + (S-s) V2) / S ("brpo"), V1 ("v1only"), V2 ("v2only"), 0 ("none"). Returns ret - b, [P, G, S]."""
  rb, pr = _f(rbar), _f(prior)
  _check_rank("rbar", rb, 3)
  if baseline not in ("brpo", "v1only", "v2only", "none"):
    raise ValueError(f"unknown baseline {baseline!r}")
  pr = pr / pr.sum()
  P, G, S = rb.shape
  out = np.zeros_like(rb)
  for p in range(P):
    for g in range(G):
      for s in range(S):
        tail = sum(pr[j] for j in range(s, S))
        ret = sum(pr[j] * rb[p, g, j] for j in range(s, S))
        v2 = 0.0 if G == 1 else np.mean([sum(pr[j] * rb[p, h, j] for j in range(s, S)) for h in range(G)])
        if s == 0:
          v1 = 0.0
        else:
          v1 = sum(discount ** j * rb[p, g, j] for j in range(s)) / sum(discount ** j for j in range(s)) * tail
        b = {"brpo": (s * v1 + (S - s) * v2) / S, "v1only": v1, "v2only": v2, "none": 0.0}[baseline]
        out[p, g, s] = ret - b
  return out


def brpo_summary(scores):
  """Summary-token advantages: scores [P, G, S, A] -> score - mean_a score[p,g,s,:] (A == 1: mean over G at budget s)."""
  sc = _f(scores)
  _check_rank("scores", sc, 4)
  P, G, S, A = sc.shape
  out = np.zeros_like(sc)
  for p in range(P):
    for g in range(G):
      for s in range(S):
        base = sc[p, g, s, :].mean() if A > 1 else sc[p, :, s, 0].mean()
        out[p, g, s, :] = sc[p, g, s, :] - base
  return out


# ---------------------------------------------------------------- Rank-GRPO

def rank_grpo_rewards(hits, *, kind="exp_inf"):
  """Per-rank rewards from hits {0,1} [..., K]. exp_inf: r_k = h_k. log_decay: r_k = sum_{j>=k} h_j d_j,
  d_0 = 1, d_j = 1/log2(j+2) (0-indexed ranks)."""
  h = _f(hits)
  if kind == "exp_inf":
    return h.copy()
  if kind != "log_decay":
    raise ValueError(f"unknown kind {kind!r}")
  K = h.shape[-1]
  d = [1.0 if j == 0 else 1.0 / math.log2(j + 2) for j in range(K)]
  out = np.zeros_like(h)
  for idx in np.ndindex(h.shape[:-1]):
    for k in range(K):
      out[idx + (k,)] = sum(h[idx + (j,)] * d[j] for j in range(k, K))
  return out


def rank_grpo(rank_rewards, *, eps=1e-4, std_ddof=1):
  """Per-rank advantages: rank_rewards [P, G, K] -> (r - mean_G r[:, :, k]) / (std_G + eps), [P, G, K]."""
  r = _f(rank_rewards)
  _check_rank("rank_rewards", r, 3)
  out = np.zeros_like(r)
  P, G, K = r.shape
  for p in range(P):
    for k in range(K):
      col = r[p, :, k]
      sd = col.std(ddof=std_ddof) if G > 1 else 0.0
      out[p, :, k] = (col - col.mean()) / (sd + eps)
  return out


from reference.advantages_tree_np import (  # noqa: E402,F401  (re-exported: one import for all references)
  dars, forking_tokens, gigpo, lp_reg_select, pure, spo_chain, spo_chain_cutpoints, spo_tree, spo_tree_keep,
  spo_tree_values, tempo, treepo, treepo_sequence)
