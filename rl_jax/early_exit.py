"""Inputs for answer rollouts after a cut thinking trace: S-GRPO's serial group of early exits and BRPO's
thinking budgets. The sampler (rl_jax.sampling) then generates each row's answer; the rewards of those
answers feed `rl_jax.advantages.s_grpo` (one exit per member) or `rl_jax.advantages.brpo` (per budget)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rl_jax.chat import left_pad


def sample_exit_positions(rng: np.random.Generator, length: int, num_exits: int) -> list[int]:
  """S-GRPO exit positions: `num_exits − 1` distinct cut points drawn uniformly from 1..length−1, sorted,
  then the full thought (`length`) as the last member. "S-GRPO: Early Exit via Reinforcement Learning in
  Reasoning Models", arXiv 2505.07686 (uniform sampling of exits; [reconstruction] of the exact draw).
  Fewer positions are returned when the thought is shorter than `num_exits`."""
  if length < 1 or num_exits < 1:
    raise ValueError(f"need length >= 1 and num_exits >= 1, got {length}, {num_exits}.")
  k = min(num_exits - 1, length - 1)
  cuts = sorted(rng.choice(np.arange(1, length), size=k, replace=False).tolist()) if k > 0 else []
  return cuts + [length]


def budget_positions(length: int, budgets: Sequence[int]) -> list[int]:
  """BRPO cut points: each thinking budget b_j (increasing, in tokens) clipped to the thought's length
  (arXiv 2505.13438 truncates the thought at each budget and summarises)."""
  if list(budgets) != sorted(budgets) or not budgets or budgets[0] < 1:
    raise ValueError(f"budgets must be increasing positive token counts, got {list(budgets)}.")
  return [min(int(b), length) for b in budgets]


def truncated_prompts(prompt_ids, prompt_mask, thought_ids, cuts: Sequence[int], trigger_ids: Sequence[int], *,
                      pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Rows prompt + thought[:c] + trigger for every cut c, left-padded to one width (the sampler's layout).

  prompt_ids/prompt_mask: [P_len] left-padded prompt of one query; thought_ids: [L] the sampled thinking
  tokens (valid prefix only); trigger_ids: the tokens that close the thought and ask for the answer (e.g.
  "</think>" or S-GRPO's "time is limited" phrase). Returns (ids [M, W], mask [M, W]).
  """
  p_ids, p_mask = np.asarray(prompt_ids), np.asarray(prompt_mask) > 0
  thought = np.asarray(thought_ids)
  if p_ids.shape != p_mask.shape or p_ids.ndim != 1 or thought.ndim != 1:
    raise ValueError("prompt_ids/prompt_mask must be one [P_len] row and thought_ids one [L] row.")
  if any(c < 0 or c > len(thought) for c in cuts):
    raise ValueError(f"cuts must lie in [0, {len(thought)}], got {list(cuts)}.")
  prompt = p_ids[p_mask].tolist()
  rows = [prompt + thought[:c].tolist() + list(trigger_ids) for c in cuts]
  return left_pad(rows, max(len(r) for r in rows), pad_id)
