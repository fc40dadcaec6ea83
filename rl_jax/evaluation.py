"""Sampling-based evaluation metrics: pass@k (unbiased), maj@k, avg@k."""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k)/C(n, k) (Chen et al., arXiv 2107.03374)."""
  if not 0 <= c <= n or k < 1 or k > n:
    raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
  if n - c < k:
    return 1.0
  return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_k(correct: Sequence[bool], k: int) -> float:
  """Mean accuracy of the first k samples."""
  if k < 1 or k > len(correct):
    raise ValueError(f"k must be in [1, {len(correct)}], got {k}.")
  return sum(map(float, correct[:k])) / k


def maj_at_k(answers: Sequence[str], is_correct: Callable[[str], bool], k: int) -> float:
  """1.0 if the most frequent of the first k extracted answers is correct (ties: first seen wins)."""
  if k < 1 or k > len(answers):
    raise ValueError(f"k must be in [1, {len(answers)}], got {k}.")
  votes = Counter(a for a in answers[:k] if a is not None)
  if not votes:
    return 0.0
  best = max(votes.values())
  winner = next(a for a in answers[:k] if a is not None and votes[a] == best)
  return float(is_correct(winner))
