"""SPO-chain's Monte-Carlo state values from continuations of the policy (arXiv 2505.23564).

The chain variant cuts each completion into segments at low-probability tokens and values each cut point
by the mean reward of continuations sampled from there; `rl_jax.advantages.spo_chain` turns those values
into segment advantages.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.advantages.tree import spo_chain_cut_points
from rl_jax.train import Rollouts, rollout

SPO_CHAIN_INTERVAL, SPO_CHAIN_THRESHOLD = 5, 0.9     # official defaults ("int5", p < 0.9)
SPO_CHAIN_SAMPLES = 9                                 # MC rollouts per cut point (official GSM8K config)


def spo_chain_mc_values(params, model_cfg, prompts: np.ndarray, prompt_mask: np.ndarray, ro: Rollouts,
                        reward: Callable[[np.ndarray, int], float], key, *, group: int, stop_tokens: tuple,
                        samples: int = SPO_CHAIN_SAMPLES, interval: int = SPO_CHAIN_INTERVAL,
                        threshold: float = SPO_CHAIN_THRESHOLD):
  """SPO-chain's Monte-Carlo values: V(c) = mean reward of `samples` continuations from prompt + y_{≤c}.

  Only the cut points of `rl_jax.advantages.spo_chain_cut_points` are sampled (the prompt state c = −1
  included). Continuations use the current policy at temperature 1 and stop at EOS or at the task's answer
  length, as the rollouts did. `reward(completion_ids, row)` scores a continued completion of row `row`. Returns (values [P, G, T], prompt_values [P, G], token_probs [P, G, T]),
  the token probabilities being those of the sampler (temperature 1, so the actor's).
  """
  n, t = ro.completion.shape
  p = n // group
  probs = np.exp(np.asarray(ro.rollout_logp, np.float64)) * (ro.completion_mask > 0)
  cut, prompt_cut = (np.asarray(x) for x in spo_chain_cut_points(
      probs.reshape(p, group, t), ro.completion_mask.reshape(p, group, t), interval=interval,
      threshold=threshold))
  cut, prompt_cut = cut.reshape(n, t), prompt_cut.reshape(n)
  values, prompt_values = np.zeros((n, t), np.float32), np.zeros(n, np.float32)
  row_prompt = np.repeat(prompts, group, axis=0)
  row_pmask = np.repeat(prompt_mask, group, axis=0)
  for c in range(-1, t - 1):
    rows = np.nonzero(prompt_cut if c < 0 else cut[:, c])[0]
    if rows.size == 0:
      continue
    padded = np.concatenate([rows, np.full(n - rows.size, rows[0])])   # one shape per c: compiled once
    ids = np.concatenate([row_prompt[padded], ro.completion[padded, :c + 1]], 1)
    msk = np.concatenate([row_pmask[padded], (ro.completion_mask[padded, :c + 1] > 0).astype(row_pmask.dtype)], 1)
    cont = rollout(params, model_cfg, ids, msk, jax.random.fold_in(key, c + 1), group_size=samples,
                   max_new_tokens=t - c - 1, temperature=1.0, stop_tokens=stop_tokens)
    for k, row in enumerate(rows):
      head = ro.completion[row, :c + 1]
      total = 0.0
      for s in range(samples):
        tail = cont.completion[k * samples + s][cont.completion_mask[k * samples + s] > 0]
        total += reward(np.concatenate([head, tail]), int(row))
      if c < 0:
        prompt_values[row] = total / samples
      else:
        values[row, c] = total / samples
  return (jnp.asarray(values.reshape(p, group, t)), jnp.asarray(prompt_values.reshape(p, group)),
          jnp.asarray(probs.reshape(p, group, t), jnp.float32))
