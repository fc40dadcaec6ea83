"""Label-free rewards from agreement between sampled answers: majority vote within a group (test-time RL)
and similarity across the rollouts of paraphrased prompts (PS-GRPO)."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence


def token_f1(a: str, b: str) -> float:
  """Bag-of-words F1 between two answers (whitespace tokens, lower-cased); 1 for two empty strings."""
  x, y = a.lower().split(), b.lower().split()
  if not x and not y:
    return 1.0
  common = sum((Counter(x) & Counter(y)).values())
  if common == 0:
    return 0.0
  p, r = common / len(x), common / len(y)
  return 2 * p * r / (p + r)


def majority_vote_rewards(answers: Sequence) -> list[float]:
  """Test-time RL pseudo-reward: 1 for answers equal to the group's most frequent answer, else 0.

  The majority-vote reward of TTRL (arXiv 2504.16084) that SPINE ("Token-Selective Test-Time RL with
  Entropy-Band Regularization") trains with; None answers (unparsed) never win and score 0. Ties go to
  the answer seen first. Example: ["4", "5", "4", None] → [1, 0, 1, 0].
  """
  counts = Counter(a for a in answers if a is not None)
  if not counts:
    return [0.0] * len(answers)
  top = max(counts.values())
  winner = next(a for a in answers if a is not None and counts[a] == top)
  return [1.0 if a is not None and a == winner else 0.0 for a in answers]


def paraphrase_consistency_rewards(outputs: Sequence[Sequence[str]],
                                   similarity: Callable[[str, str], float] = token_f1) -> list[list[float]]:
  """PS-GRPO group similarity reward: rollout i of paraphrase k scores its mean similarity to every rollout
  of the OTHER paraphrases of the same query.

    r_{k,i} = mean_{k'≠k, j} sim(y_{k,i}, y_{k',j}).

  "Improving Consistency in Retrieval-Augmented Systems with Group Similarity Rewards" (PS-GRPO).
  [reconstruction] from the abstract: the similarity (default bag-of-words F1; the paper's may be a
  learned or lexical metric) is an argument; the paper's scalable approximation (subsampling pairs) is not
  here. `outputs` is [K paraphrases][G rollouts]; needs K ≥ 2.
  Example: [["a b", "a"], ["a b"]] → [[1, 2/3], [5/6]].
  """
  if len(outputs) < 2:
    raise ValueError(f"need rollouts of at least 2 paraphrases, got {len(outputs)}.")
  rewards = []
  for k, group in enumerate(outputs):
    others = [y for k2, g in enumerate(outputs) if k2 != k for y in g]
    rewards.append([sum(similarity(y, z) for z in others) / len(others) if others else 0.0 for y in group])
  return rewards
