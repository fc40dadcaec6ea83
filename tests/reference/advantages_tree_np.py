"""Float64 NumPy loop references for tree / segment / step credit assignment and token selection.

Same layout conventions as advantages_np (re-exported there): rewards [P, G], tokens / mask [P, G, T]."""

import math

import numpy as np


def _f(x):
  return np.asarray(x, dtype=np.float64)


def _whiten(x, m):
  s = m.sum()
  if s <= 1:
    raise ValueError("whiten needs at least two valid entries")
  mu = (x * m).sum() / s
  var = ((x - mu) ** 2 * m).sum() / s * s / (s - 1)
  return (x - mu) / math.sqrt(var + 1e-8)


# ---------------------------------------------------------------- TEMPO

def tempo(tokens, mask, rewards, *, eps=1e-6, norm_by_std=True):
  """TEMPO prefix-trie advantages (the official loop, with mask-aware token equality).

  tokens int [P, G, T], mask [P, G, T], rewards [P, G] -> A [P, G, T].
  For row i: prev = all G samples; for j while mask[i, j] == 1: branch = {k in prev : mask[k, j] == 1 and
  tok[k, j] == tok[i, j]}; A[i, j] = (r_i - mu + mean r[branch] - mean r[prev]) / (std_u r + eps); if |prev| == 1 the value
  is copied to all later positions and the loop stops; prev = branch. Output multiplied by mask.
  G == 1: all zeros (the official code gives NaN)."""
  tok, m, r = np.asarray(tokens), _f(mask), _f(rewards)
  P, G, T = m.shape
  out = np.zeros_like(m)
  if G == 1:
    return out
  for p in range(P):
    mu, sd = r[p].mean(), r[p].std(ddof=1)
    scale = sd + eps if norm_by_std else 1.0
    for i in range(G):
      prev = list(range(G))
      for j in range(T):
        if m[p, i, j] == 0:
          break
        branch = [k for k in prev if m[p, k, j] == 1 and tok[p, k, j] == tok[p, i, j]]
        v_cur = np.mean([r[p, k] for k in prev])
        v_next = np.mean([r[p, k] for k in branch])
        a = (r[p, i] - mu + v_next - v_cur) / scale
        if len(prev) == 1:
          out[p, i, j:] = a
          break
        out[p, i, j] = a
        prev = branch
  return out * m


# ---------------------------------------------------------------- TreePO

def treepo_sequence(rewards, paths, *, weighting="average", remove_no_std_subgroup=False):
  """TreePO sequence-level advantage before whitening.

  paths int [P, G, Dp]: node id of each trajectory at tree depth 1..Dp, -1 padding after its leaf. Trajectories of one
  prompt with equal paths[:d] share the depth-d subtree (group_d). D = max path length over the batch.
  For d in 0..D-1: c_d = R_i - mean{R_k : k in group_d(i)} (d = 0: prompt group; a size-1 prompt group has mean 0);
  term kept if d == 0 or |group_d| > 1 (and, if remove_no_std_subgroup, std of the d > 0 group > 0).
  "average": mean of kept c_d. "group_size": sum c_d |g_d| / sum |g_d| over kept terms. Returns [P, G]."""
  r, pth = _f(rewards), np.asarray(paths)
  if weighting not in ("average", "group_size"):
    raise ValueError(f"unknown weighting {weighting!r}")
  P, G = r.shape
  D = int((pth >= 0).sum(-1).max()) if pth.size else 0
  out = np.zeros_like(r)
  for p in range(P):
    for i in range(G):
      cs, sizes = [], []
      for d in range(max(D, 1)):
        key = tuple(pth[p, i, :d])
        grp = [k for k in range(G) if tuple(pth[p, k, :d]) == key]
        vals = [r[p, k] for k in grp]
        if d > 0 and len(grp) <= 1:
          continue
        if d > 0 and remove_no_std_subgroup and np.std(vals) == 0:
          continue
        mean = 0.0 if len(grp) == 1 else np.mean(vals)
        cs.append(r[p, i] - mean)
        sizes.append(len(grp))
      if weighting == "average":
        out[p, i] = np.mean(cs)
      else:
        out[p, i] = sum(c * s for c, s in zip(cs, sizes)) / sum(sizes)
  return out


def treepo(rewards, paths, mask, *, weighting="average", remove_no_std_subgroup=False):
  """TreePO advantage: whiten(broadcast(treepo_sequence), mask) * mask, global over the batch. -> [P, G, T]."""
  m = _f(mask)
  a = treepo_sequence(rewards, paths, weighting=weighting, remove_no_std_subgroup=remove_no_std_subgroup)
  return _whiten(a[:, :, None] * m, m) * m


# ---------------------------------------------------------------- SPO chain / tree (AIFrameResearch)

def spo_chain_cutpoints(probs, mask, *, threshold=0.9, interval=5):
  """Cutpoints of one response: probs [T], mask [T] -> list of ints c = (L - 1)[::interval], L = {t valid : p_t < threshold}.
  c = -1 means the prompt-only state."""
  low = [t for t in range(len(probs)) if mask[t] == 1 and probs[t] < threshold]
  return [t - 1 for t in low][::interval]


def spo_chain(probs, mask, values, scores, *, threshold=0.9, interval=5, prob_mask=True, whiten_advantages=True):
  """SPO-chain MC advantages.

  probs [B, T] token probabilities of the sampled tokens, mask [B, T], scores [B] final rewards,
  values [B, C] MC value of each cutpoint in the order given by spo_chain_cutpoints (extra columns ignored, e.g. NaN).
  Value points: the cutpoints, plus the last valid token with V = score (the score wins on collision). Walking the
  tokens in order: at a value point t: adv[t] = V(t) - base (0 if no earlier value point), base = V(t); other tokens take
  the advantage of the next value point (tokens after the last value point: 0). If prob_mask: adv[t] = 0 where
  p_t > threshold and whitening over mask & (p < threshold) (fallback: mask); else whitening over mask.
  Returns [B, T] * mask."""
  pr, m, v, sc = _f(probs), _f(mask), _f(values), _f(scores)
  B, T = pr.shape
  adv = np.zeros_like(pr)
  for b in range(B):
    cuts = spo_chain_cutpoints(pr[b], m[b], threshold=threshold, interval=interval)
    vp = {c: v[b, k] for k, c in enumerate(cuts)}
    last = int(np.nonzero(m[b])[0][-1]) if m[b].any() else -1
    if last >= 0:
      vp[last] = sc[b]
    base = None
    if -1 in vp:
      base = vp[-1]
    for t in range(T):
      if t in vp:
        adv[b, t] = 0.0 if base is None else vp[t] - base
        base = vp[t]
    nxt = 0.0
    for t in range(T - 1, -1, -1):
      if t in vp:
        nxt = adv[b, t]
      else:
        adv[b, t] = nxt
  if prob_mask:
    adv = np.where(pr > threshold, 0.0, adv)
  if whiten_advantages:
    wm = m * (pr < threshold) if prob_mask else m
    if wm.sum() == 0:
      wm = m
    adv = _whiten(adv, wm)
  return adv * m


def spo_tree_values(parent, leaf_values):
  """Node values of a tree. parent int [N] (-1 = root), leaf_values [N] (used at leaves only).
  Internal node value = mean of its children's values. Returns [N]."""
  par = [int(x) for x in parent]
  lv = _f(leaf_values)
  children = {i: [c for c in range(len(par)) if par[c] == i] for i in range(len(par))}

  def val(i):
    return lv[i] if not children[i] else float(np.mean([val(c) for c in children[i]]))

  return np.array([val(i) for i in range(len(par))])


def spo_tree(parent, values, *, mode="rloo", eps=1e-8):
  """Edge advantages: node i (non-root) gets V(i) - V(parent(i)) ("rloo") or that divided by
  (std_p of V over the siblings incl. i) + eps ("grpo"). Roots get 0. parent [N], values [N] -> [N]."""
  par = [int(x) for x in parent]
  v = _f(values)
  if mode not in ("rloo", "grpo"):
    raise ValueError(f"unknown mode {mode!r}")
  out = np.zeros_like(v)
  for i, q in enumerate(par):
    if q < 0:
      continue
    a = v[i] - v[q]
    if mode == "grpo":
      sib = [v[c] for c in range(len(par)) if par[c] == q]
      a = a / (np.std(sib) + eps)
    out[i] = a
  return out


def spo_tree_keep(parent, values, advantages, *, k=4):
  """only_adv_greater_than_zero filter: keep edge i iff adv_i + BoK(V_i) - BoK(V_parent) != 0, BoK(v) = 1 - (1-v)^k.
  Roots are never kept. Returns bool [N]."""
  par, v, a = [int(x) for x in parent], _f(values), _f(advantages)
  bok = lambda x: 1.0 - (1.0 - x) ** k  # noqa: E731
  return np.array([q >= 0 and (a[i] + bok(v[i]) - bok(v[q])) != 0 for i, q in enumerate(par)])


# ---------------------------------------------------------------- GiGPO

def gigpo(group, traj, step, anchor, step_rewards, episode_rewards, *, gamma=0.95, omega=1.0,
          mode="mean_norm", eps=1e-6):
  """GiGPO, one row per environment-step sample (all inputs [N]):
  group int (episode group uid), traj int (trajectory uid), step int (time index inside the trajectory),
  anchor int (anchor-state id; equal ids in one episode group = same state), step_rewards float,
  episode_rewards float (R(tau) of the sample's trajectory; must be constant per trajectory).
  Episode: per group over its trajectories (each once): R - mu ("mean_norm") or (R - mu)/(std_u + eps) ("mean_std_norm");
  a single-trajectory group uses mu = 0, std = 1. Step: returns G_t = r_t + gamma G_{t+1} per trajectory (ordered by step),
  anchor groups = (group, anchor); G - mu_s or (G - mu_s)/(std_u + eps); singleton anchor group -> 0.
  Returns A^E + omega A^S, [N]."""
  grp, trj, stp, anc = (np.asarray(x) for x in (group, traj, step, anchor))
  sr, er = _f(step_rewards), _f(episode_rewards)
  if mode not in ("mean_norm", "mean_std_norm"):
    raise ValueError(f"unknown mode {mode!r}")
  N = len(grp)

  def norm(x, xs, single):
    if len(xs) == 1:
      return single
    mu = np.mean(xs)
    return x - mu if mode == "mean_norm" else (x - mu) / (np.std(xs, ddof=1) + eps)

  traj_r = {}
  for n in range(N):
    key = (int(grp[n]), int(trj[n]))
    if key in traj_r and traj_r[key] != er[n]:
      raise ValueError("episode_rewards must be constant within a trajectory")
    traj_r[key] = er[n]
  ret = np.zeros(N)
  for key in traj_r:
    rows = sorted([n for n in range(N) if (int(grp[n]), int(trj[n])) == key], key=lambda n: stp[n])
    acc = 0.0
    for n in reversed(rows):
      acc = sr[n] + gamma * acc
      ret[n] = acc
  out = np.zeros(N)
  for n in range(N):
    g = int(grp[n])
    rs = [traj_r[k] for k in traj_r if k[0] == g]
    a_e = norm(er[n], rs, er[n])
    peers = [ret[k] for k in range(N) if int(grp[k]) == g and anc[k] == anc[n]]
    a_s = norm(ret[n], peers, 0.0)
    out[n] = a_e + omega * a_s
  return out


# ---------------------------------------------------------------- PURE min-form credit

def pure(prm_rewards, step_mask, sep_pos, solved, mask, *, temperature=0.1, baseline="token", weighted=True,
         vr_coef=1.0, mask_separator=True):
  """PURE min-form credit (gamma = 1, no KL, no whitening).

  prm_rewards [P, G, K] step rewards r_k in [-1, 1]; step_mask [P, G, K]; sep_pos int [P, G, K] token index of each
  step's separator (increasing); solved [P, G] in {0, 1}; mask [P, G, T].
  w = softmax_k(-r/temperature) over valid steps (uniform if not weighted); rt_k = w_k r_k.
  baseline "token": b_i = sum_{j != i} sum_k rt_{j,k} / sum_{j != i} len_j (len = valid tokens), rt_{i,k} -= b_i ntok_{i,k},
  ntok_{i,k} = sep_pos_k - sep_pos_{k-1} (sep_pos_{-1} = -1); "step": rt_{i,k} -= mean_{j != i} mean_k rt_{j,k};
  "none": no baseline. VR: v = solved - 1, RLOO-centered, times vr_coef at the last valid token.
  Token reward = rt at separator positions + VR at EOS; A_t = sum_{t' >= t} reward_t' over the row;
  separator tokens get A = 0 if mask_separator. Returns [P, G, T] * mask. Needs G >= 2."""
  pr, sm, sp, sv, m = _f(prm_rewards), _f(step_mask), np.asarray(sep_pos), _f(solved), _f(mask)
  P, G, K = pr.shape
  T = m.shape[-1]
  if G < 2:
    raise ValueError("pure needs G >= 2 (RLOO baselines)")
  if baseline not in ("token", "step", "none"):
    raise ValueError(f"unknown baseline {baseline!r}")
  out = np.zeros_like(m)
  for p in range(P):
    rt = np.zeros((G, K))
    ntok = np.zeros((G, K))
    for i in range(G):
      ks = [k for k in range(K) if sm[p, i, k] == 1]
      if ks:
        logits = [-pr[p, i, k] / temperature if weighted else 0.0 for k in ks]
        mx = max(logits)
        e = [math.exp(z - mx) for z in logits]
        for k, ek in zip(ks, e):
          rt[i, k] = ek / sum(e) * pr[p, i, k]
      prev = -1
      for k in ks:
        ntok[i, k] = sp[p, i, k] - prev
        prev = sp[p, i, k]
    lens = m[p].sum(-1)
    adj = rt.copy()
    for i in range(G):
      others = [j for j in range(G) if j != i]
      if baseline == "token":
        b = sum(rt[j].sum() for j in others) / sum(lens[j] for j in others)
        adj[i] = rt[i] - b * ntok[i]
      elif baseline == "step":
        per = [rt[j].sum() / max(sm[p, j].sum(), 1) for j in others]
        adj[i] = rt[i] - np.mean(per)
      adj[i] = adj[i] * sm[p, i]
    v = sv[p] - 1.0
    for i in range(G):
      rew = np.zeros(T)
      for k in range(K):
        if sm[p, i, k] == 1:
          rew[sp[p, i, k]] += adj[i, k]
      valid = np.nonzero(m[p, i])[0]
      if len(valid):
        vr = v[i] - np.mean([v[j] for j in range(G) if j != i])
        rew[valid[-1]] += vr_coef * vr
      acc = 0.0
      for t in range(T - 1, -1, -1):
        acc += rew[t]
        out[p, i, t] = acc
      if mask_separator:
        for k in range(K):
          if sm[p, i, k] == 1:
            out[p, i, sp[p, i, k]] = 0.0
  return out * m


# ---------------------------------------------------------------- token selection / DARS

def forking_tokens(entropy, mask, *, rho=0.2):
  """Top-rho entropy gate over all valid tokens of the batch: n = #valid, k = ceil(rho n), tau = k-th largest valid entropy;
  keep = mask & (H >= tau) (ties kept). Any shape; returns bool of the same shape (all False if no valid token)."""
  h, m = _f(entropy), _f(mask)
  vals = sorted([h[idx] for idx in np.ndindex(h.shape) if m[idx] == 1], reverse=True)
  if not vals:
    return np.zeros(h.shape, bool)
  k = max(1, math.ceil(rho * len(vals)))
  tau = vals[k - 1]
  return (m == 1) & (h >= tau)


def lp_reg_select(logp, logp_proxy, advantages, mask, *, neg_frac=0.01):
  """Lp-Reg selection. Among valid tokens with A < 0 (n_neg of them), k = max(1, int(neg_frac n_neg)); take the tokens
  whose logp <= the k-th smallest negative-token logp (ties kept), and keep those with logp < logp_proxy.
  Nothing is selected unless k > 1. Any shape; returns bool."""
  lp, lq, a, m = _f(logp), _f(logp_proxy), _f(advantages), _f(mask)
  neg = [idx for idx in np.ndindex(lp.shape) if m[idx] == 1 and a[idx] < 0]
  sel = np.zeros(lp.shape, bool)
  k = max(1, int(neg_frac * len(neg)))
  if not neg or k <= 1:
    return sel
  thr = sorted(lp[idx] for idx in neg)[k - 1]
  for idx in neg:
    if lp[idx] <= thr and lp[idx] < lq[idx]:
      sel[idx] = True
  return sel


def dars(accuracy, *, n=8, n_max=32, schedule="ET", use_std=False):
  """DARS extra rollouts per prompt. accuracy [P] -> int [P].
  a <= 1e-6 -> a = 0.5/n; a >= 0.5 -> 0. S = 2a(1-a) (no std) or 2 sqrt(a(1-a)); A_peak = 0.5 n (no std) or n.
  ET: ceil((A_peak - n S)/S); HW: ceil((2(1-a) A_peak - n S)/S); both min(., n_max - n) and >= 0."""
  if schedule not in ("ET", "HW"):
    raise ValueError(f"unknown schedule {schedule!r}")
  out = []
  for a in _f(accuracy):
    if a <= 1e-6:
      a = 0.5 / n
    if a >= 0.5:
      out.append(0)
      continue
    s = 2 * math.sqrt(a * (1 - a)) if use_std else 2 * a * (1 - a)
    peak = n if use_std else 0.5 * n
    target = peak if schedule == "ET" else 2 * (1 - a) * peak
    out.append(max(0, min(math.ceil((target - n * s) / s), n_max - n)))
  return np.array(out, dtype=np.int64)
