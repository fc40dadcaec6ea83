"""Length-based reward shaping, counted in tokens."""

from __future__ import annotations


def dapo_overlong_penalty(length: int, *, max_len: int, cache: int, factor: float = 1.0, cap: bool = True) -> float:
  """DAPO soft overlong punishment (arXiv 2503.14476), added to the correctness reward.

  0 if |y| ≤ L_max − L_cache; ((L_max − L_cache) − |y|)/L_cache·factor inside the cache; with `cap`
  (the paper) −1 beyond L_max, without it the official code's unbounded linear value.
  Example (20480, 4096): 16384 → 0, 18432 → −0.5, 20480 → −1.
  """
  if max_len <= cache or cache <= 0:
    raise ValueError(f"need 0 < cache < max_len, got cache={cache}, max_len={max_len}.")
  budget = max_len - cache
  if length <= budget:
    return 0.0
  if cap and length > max_len:
    return -1.0
  return min((budget - length) / cache * factor, 0.0)


def length_penalty(length: int, *, target: int, coef: float = 1e-3) -> float:
  """−coef · max(0, length − target): a linear penalty for tokens beyond a target length."""
  return -coef * max(0, length - target)
