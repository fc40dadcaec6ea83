"""Float64 loop references for the prompt-selection, replay, token-selection and reward-shaping rules of the seed
methods that have no peer library: ReST-GRPO's variance filter, MMR1's variance-aware sampling, ARPO's replay
slots and success buffer, PPPO's prefix retention, Train Long Think Short's budget and reward, the majority-vote
and paraphrase-consistency rewards, AEPO's window-entropy triggers and hierarchical entropy reward.

Written from the formulas stated in the papers (and, where rl_jax follows official code, from that code's
rule as its docstring states it), one element at a time, without importing rl_jax.
"""

import math


def variance_filter(rewards, *, min_std=0.0, max_mean=1.0):
  out = []
  for group in rewards:
    g = [float(x) for x in group]
    mu = sum(g) / len(g)
    sd = math.sqrt(sum((x - mu) ** 2 for x in g) / len(g))      # population std over the group
    out.append(sd > min_std and mu <= max_mean)
  return out


def variance_promotion_weights(pass_rate, diversity=None, *, alpha=1.0, beta=0.0, mix=0.5):
  n = len(pass_rate)
  div = [0.0] * n if diversity is None else [float(d) for d in diversity]
  vps = [alpha * p * (1.0 - p) + beta * d for p, d in zip(pass_rate, div)]
  total = sum(vps)
  if total <= 0:
    return [1.0 / n] * n
  return [mix * v / total + (1.0 - mix) / n for v in vps]


def replay_slots(rewards, has_success, *, max_std=0.05, max_mean=0.2):
  out = []
  for group, has in zip(rewards, has_success):
    g = [float(x) for x in group]
    mu = sum(g) / len(g)
    sd = math.sqrt(sum((x - mu) ** 2 for x in g) / len(g))
    replace = bool(has) and sd < max_std and mu < max_mean
    out.append([replace and j == 0 for j in range(len(g))])
  return out


def replay_buffer_update(buffer, task_ids, items, rewards, *, min_reward=0.1, size=8):
  out = {k: list(v) for k, v in buffer.items()}
  for task, item, r in zip(task_ids, items, rewards):
    if float(r) > min_reward:
      kept = out.setdefault(task, [])
      kept.append(item)
      while len(kept) > size:
        kept.pop(0)
  return out


def prefix_retention(mask, *, step, total_steps, start_frac=0.2, end_frac=1.0):
  t = min(max(step, 0), total_steps)
  frac = start_frac + (end_frac - start_frac) * t / total_steps
  out = []
  for row in mask:
    n = sum(1 for m in row if m > 0)
    keep = math.ceil(frac * n - 1e-9)
    seen, kept = 0, []
    for m in row:
      on = m > 0 and seen < keep
      seen += m > 0
      kept.append(1.0 if on else 0.0)
    out.append(kept)
  return out


def curriculum_budget(step, *, start, end, total_steps, schedule="exponential"):
  """The budget before rounding to whole tokens."""
  t = min(max(step, 0), total_steps) / total_steps
  if schedule == "exponential":
    return math.exp(math.log(start) + t * (math.log(end) - math.log(start)))
  return (1 - t) * start + t * end


def curriculum_reward(correct, length, format_ok, *, budget, w_correct=1.0, w_length=0.5, w_format=0.1):
  over = max(0, length - budget)
  return w_correct * correct + w_format * format_ok - w_length * over / budget


def majority_vote_rewards(answers):
  counts, first = {}, {}
  for i, a in enumerate(answers):
    if a is None:
      continue
    counts[a] = counts.get(a, 0) + 1
    first.setdefault(a, i)
  if not counts:
    return [0.0] * len(answers)
  winner = min(counts, key=lambda a: (-counts[a], first[a]))  # most frequent, then seen first
  return [1.0 if a is not None and a == winner else 0.0 for a in answers]


def bag_f1(a, b):
  x, y = a.lower().split(), b.lower().split()
  if not x and not y:
    return 1.0
  common = 0
  for w in set(x):
    common += min(x.count(w), y.count(w))
  if common == 0:
    return 0.0
  precision, recall = common / len(x), common / len(y)
  return 2 * precision * recall / (precision + recall)


def paraphrase_consistency_rewards(outputs, similarity=bag_f1):
  out = []
  for k, group in enumerate(outputs):
    row = []
    for y in group:
      total, count = 0.0, 0
      for k2, other in enumerate(outputs):
        if k2 == k:
          continue
        for z in other:
          total += similarity(y, z)
          count += 1
      row.append(total / count if count else 0.0)
    out.append(row)
  return out


def window_entropy_triggers(entropy, is_trigger, *, threshold, window=4):
  valid = invalid = 0
  cost = 0.0
  for t, trig in enumerate(is_trigger):
    if not trig or t + window >= len(entropy):                 # the window t+1 .. t+window must exist
      continue
    mean = sum(entropy[t + 1:t + 1 + window]) / window
    cost += max(0.0, mean - threshold)
    if mean >= threshold:
      valid += 1
    else:
      invalid += 1
  return valid, invalid, cost


# ARES' per-difficulty constants (tolerance fraction, Huber knee, sigmoid temperature, cap scale, wrong-answer gain).
_AEPO = {"easy": (0.15, 2.0, 2.0, 1.0, 0.6), "medium": (0.25, 3.0, 2.5, 1.0, 0.8), "hard": (0.35, 4.0, 3.0, 1.2, 1.0)}


def _huber(x, kappa):
  x = max(0.0, x)
  return x * x / (2 * kappa) if x <= kappa else x - kappa / 2


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def hierarchical_entropy_reward(correct, difficulty, hwe_count, target, *, alpha=0.5):
  frac, kappa, temp, scale, gain = _AEPO[difficulty]
  cap = alpha * scale
  delta = hwe_count - target
  band = max(1.0, frac * max(target, 1.0))
  if not correct:                                              # explore more when wrong, beyond the band
    return gain * cap * _sigmoid(max(0.0, delta - band) / temp)
  if difficulty == "easy":                                     # over-exploring an easy problem costs
    excess = delta - band
  elif difficulty == "medium":                                 # straying either way costs
    excess = abs(delta) - band
  elif delta >= -band:                                         # hard: exploring at least to the band earns
    return cap * _sigmoid((delta + band) / temp)
  else:                                                        # hard, far below the target: half the penalty
    return -min(cap, 0.5 * cap * _huber(-delta - band, kappa) / (band + kappa))
  return -min(cap, cap * _huber(excess, kappa) / (band + kappa))
