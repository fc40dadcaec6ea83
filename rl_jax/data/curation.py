"""Prompt selection and replay over group rewards [P, G]: which prompts to train on, how often to sample
them, and when to replay a stored success. Pure NumPy (host side, between rollouts and the update)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _rewards(rewards) -> np.ndarray:
  r = np.asarray(rewards, np.float64)
  if r.ndim != 2 or not np.all(np.isfinite(r)):
    raise ValueError(f"rewards must be a finite [P, G] array, got shape {r.shape}.")
  return r


def variance_filter(rewards, *, min_std: float = 0.0, max_mean: float = 1.0) -> np.ndarray:
  """ReST-GRPO-style filter [P] bool: keep a prompt when its group's reward std (ddof 0) is > `min_std`
  and its mean reward ≤ `max_mean` (raising the reward variance GRPO sees).

  ReST-RL, arXiv 2508.19576. [reconstruction]: only the variance-raising filter is implemented; the
  paper's assembly of high-value training data from filtered samples and its thresholds are not
  (both thresholds are keywords). Example: [[1, 1], [1, 0], [0, 0]] → [False, True, False].
  """
  r = _rewards(rewards)
  return (r.std(axis=1) > min_std) & (r.mean(axis=1) <= max_mean)


def variance_promotion_weights(pass_rate, diversity=None, *, alpha: float = 1.0, beta: float = 0.0,
                               mix: float = 0.5) -> np.ndarray:
  """MMR1 variance-aware sampling (VAS) probabilities [N] over prompts.

    VPS_p = α·p(1 − p) + β·TDS_p,   P(p) = mix·VPS_p/Σ VPS + (1 − mix)/N,

  p = the prompt's estimated pass rate (over 8 rollouts in the code), TDS a trajectory-diversity score of
  its rollouts. "MMR1: Enhancing Multimodal Reasoning with Variance-Aware Sampling and Open Resources",
  arXiv 2509.21268. Defaults from the official code's shipped config (examples/mmr1.yaml): only the
  "learnability" p(1 − p) with weight 1 (β = 0; the code also offers self-BLEU-123 and edit-distance
  diversity metrics, pass one as `diversity` with its weight β) and half of each batch drawn by weight,
  half uniformly (mix = 0.5; the code composes each batch that way, the same probabilities in
  expectation). The code refreshes the weights every 4 steps. All-zero VPS gives uniform sampling.
  Example (mix = 1): p = [0.5, 1, 0] → [1, 0, 0].
  """
  p = np.asarray(pass_rate, np.float64).reshape(-1)
  d = np.zeros_like(p) if diversity is None else np.asarray(diversity, np.float64).reshape(-1)
  if p.shape != d.shape or p.size == 0:
    raise ValueError(f"pass_rate and diversity must be non-empty [N] arrays of one shape, got {p.shape}, {d.shape}.")
  if not 0.0 <= mix <= 1.0 or alpha < 0 or beta < 0:
    raise ValueError(f"need alpha, beta >= 0 and 0 <= mix <= 1, got {alpha}, {beta}, {mix}.")
  vps = alpha * p * (1.0 - p) + beta * d
  uniform = np.full(p.shape, 1.0 / p.size)
  if vps.sum() <= 0:
    return uniform
  return mix * vps / vps.sum() + (1.0 - mix) * uniform


def replay_slots(rewards, has_success, *, max_std: float = 0.05, max_mean: float = 0.2) -> np.ndarray:
  """ARPO replay [P, G] bool: in an all-negative group (reward std < `max_std` and mean < `max_mean`) whose
  prompt has a stored success, mark the FIRST sample's slot to be replaced by one drawn from the buffer.

  "ARPO: End-to-End Policy Optimization for GUI Agents with Experience Replay", arXiv 2505.16282; rule and
  thresholds from the official code (apply_replay). The caller swaps the marked rows' tokens, log-probs
  and reward for a buffered success (see `replay_buffer_update`), then computes advantages as usual.
  """
  r = _rewards(rewards)
  has = np.asarray(has_success, bool).reshape(-1)
  if has.shape != (r.shape[0],):
    raise ValueError(f"has_success must have shape ({r.shape[0]},), got {has.shape}.")
  all_negative = (r.std(axis=1) < max_std) & (r.mean(axis=1) < max_mean) & has
  slots = np.zeros(r.shape, bool)
  slots[:, 0] = all_negative
  return slots


def replay_buffer_update(buffer: dict, task_ids: Sequence, items: Sequence, rewards, *, min_reward: float = 0.1,
                         size: int = 8) -> dict:
  """ARPO's success buffer: per task id, the last `size` items whose reward is > `min_reward` (FIFO).
  Returns a new dict (the input is not modified). Official code: threshold 0.1, 8 per task."""
  r = np.asarray(rewards, np.float64).reshape(-1)
  if not len(task_ids) == len(items) == len(r):
    raise ValueError(f"task_ids, items and rewards must have one length, got {len(task_ids)}, {len(items)}, {len(r)}.")
  out = {k: list(v) for k, v in buffer.items()}
  for task, item, reward in zip(task_ids, items, r):
    if reward > min_reward:
      out[task] = (out.get(task, []) + [item])[-size:]
  return out
