"""AEPO (ARES) difficulty-aware entropy shaping: count high-window-entropy (HWE) reasoning triggers in a
response, bucket prompts by group accuracy, and shape the reward by the HWE count's distance to the
bucket's target. "ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping",
arXiv 2510.08457; constants from the official code (examples/reward_function/aepo.py, the trainer's buckets).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Per difficulty: tolerance band (fraction of the target), Huber knee κ, sigmoid temperature, cap scale.
AEPO_BUCKETS = {"easy": (0.15, 2.0, 2.0, 1.0), "medium": (0.25, 3.0, 2.5, 1.0), "hard": (0.35, 4.0, 3.0, 1.2)}


def window_entropy_triggers(entropy: Sequence[float], is_trigger: Sequence[bool], *, threshold: float,
                            window: int = 4) -> tuple[int, int, float]:
  """(valid, invalid, soft cost) over a response's trigger tokens: a trigger at t is valid ("HWE") when the
  mean entropy of the next `window` tokens is ≥ threshold; triggers without a full window are skipped;
  soft cost = Σ max(0, window mean − threshold). Triggers are the tokens of the code's reasoning-token list
  (e.g. "wait", "but"); window = 4 as in its config."""
  h = np.asarray(entropy, np.float64)
  trig = np.asarray(is_trigger, bool)
  if h.shape != trig.shape or h.ndim != 1 or window < 1:
    raise ValueError(f"entropy and is_trigger must be [T] of one shape and window >= 1, got {h.shape}, "
                     f"{trig.shape}, {window}.")
  valid = invalid = 0
  cost = 0.0
  for t in np.flatnonzero(trig):
    if len(h) - t - 1 < window:
      continue
    mean = float(h[t + 1:t + 1 + window].mean())
    cost += max(0.0, mean - threshold)
    valid, invalid = (valid + 1, invalid) if mean >= threshold else (valid, invalid + 1)
  return valid, invalid, cost


def difficulty_bucket(accuracy: float) -> str:
  """AEPO's buckets from a prompt's group accuracy: ≥ 2/3 easy, ≥ 1/3 medium, else hard."""
  return "easy" if accuracy >= 2 / 3 else "medium" if accuracy >= 1 / 3 else "hard"


def _huber(x: float, kappa: float) -> float:
  x = max(x, 0.0)
  return 0.5 * x * x / kappa if x <= kappa else x - 0.5 * kappa


def _saturate(x: float, temp: float) -> float:
  return 1.0 / (1.0 + math.exp(-x / max(temp, 1e-6)))


def hierarchical_entropy_reward(correct: bool, difficulty: str, hwe_count: float, target: float, *,
                                alpha: float = 0.5) -> float:
  """AEPO's entropy term added to the accuracy reward, from δ = n_HWE − target and a band m = max(1, f·target):

    easy,   correct: −min(α, H(δ − m)/(m + κ)·α)          wrong: 0.6·α·σ((δ − m)⁺/T)
    medium, correct: −min(α, H(|δ| − m)/(m + κ)·α)        wrong: 0.8·α·σ((δ − m)⁺/T)
    hard,   correct: δ ≥ −m: 1.2α·σ((δ + m)/T), else −min(1.2α, ½ H(−δ − m)/(m + κ)·1.2α);  wrong: 1.2α·σ((δ − m)⁺/T)

  H = Huber with knee κ, σ = logistic; (f, κ, T, cap scale) per bucket in AEPO_BUCKETS; α = 0.5 (the code's
  initial per-bucket α, which its trainer then adapts by dual ascent — not done here). Easy problems are
  penalised for exploring more than the target, hard ones rewarded for it.
  """
  if difficulty not in AEPO_BUCKETS:
    raise ValueError(f"Unknown difficulty {difficulty!r}; expected one of {sorted(AEPO_BUCKETS)}.")
  frac, kappa, temp, scale = AEPO_BUCKETS[difficulty]
  cap = alpha * scale
  delta = float(hwe_count) - float(target)
  margin = max(1.0, frac * max(float(target), 1.0))
  if not correct:
    gain = {"easy": 0.6, "medium": 0.8, "hard": 1.0}[difficulty]
    return _saturate(max(delta - margin, 0.0), temp) * cap * gain
  if difficulty == "easy":
    return -min(cap, _huber(delta - margin, kappa) / (margin + kappa) * cap)
  if difficulty == "medium":
    return -min(cap, _huber(abs(delta) - margin, kappa) / (margin + kappa) * cap)
  if delta >= -margin:
    return _saturate(delta + margin, temp) * cap
  return -min(cap, 0.5 * _huber(-delta - margin, kappa) / (margin + kappa) * cap)
