"""Advantages of one rollout batch, the estimator's inputs gathered from the rollouts (what the RL loop calls).

Group estimators read the rewards [P, G]. TEMPO (arXiv 2509.18314) reads the completion tokens (the
group's prefix tree). On TreePO tree rollouts (arXiv 2508.17445) the group statistics leave out empty
rows (`valid` False), TreePO reads the tree paths and SPO-tree (arXiv 2505.23564) the tree's node values;
SPO-chain (arXiv 2505.23564) reads Monte-Carlo values at its cut points (`rl_jax.mc_values`).

`tree_term_frac` (a metric): the share of valid completion tokens where the method's token credit differs
from the response's centred reward R − mean (TEMPO: the TD term V(s_{j+1}) − V(s_j); TreePO: the
subtree-averaged centred reward; SPO-tree: the kept edge advantage; SPO-chain: the segment advantage).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from rl_jax.advantages.core import get
from rl_jax.advantages.process import spo_tree_token_advantages
from rl_jax.advantages.token import masked_whiten
from rl_jax.advantages.tree import spo_chain, tempo, treepo

# Estimators that run on tree rollouts (the rest read group layouts a tree does not have).
TREE_ADVANTAGES = ("grpo", "tempo", "treepo", "spo_tree")
# Estimators that read the tree paths, so run only on tree rollouts.
PATH_ADVANTAGES = ("treepo", "spo_tree")
EPS = 1e-6   # GRPO's std offset (verl)


class BatchAdvantages(NamedTuple):
  advantages: np.ndarray               # [P, G] per response or [P, G, T] per token
  metrics: dict                        # e.g. {"tree_term_frac": ...}
  loss_mask: Optional[np.ndarray] = None   # [P, G, T] replacing the completion mask in the loss (SPO-chain)


def nonzero_frac(x, mask) -> float:
  """Share of the tokens where mask > 0 whose |x| > 1e-6."""
  m = np.asarray(mask) > 0
  return float(((np.abs(np.asarray(x)) > 1e-6) & m).sum() / max(m.sum(), 1))


def masked_group_stats(rewards: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased std [P, 1] of each group's valid rows (std 0 with fewer than two)."""
  cnt = valid.sum(1, keepdims=True)
  mu = (rewards * valid).sum(1, keepdims=True) / np.maximum(cnt, 1)
  var = (np.square(rewards - mu) * valid).sum(1, keepdims=True) / np.maximum(cnt - 1, 1)
  return mu, np.where(cnt > 1, np.sqrt(var), 0.0)


def tree_grpo(rewards: np.ndarray, valid: np.ndarray) -> BatchAdvantages:
  """GRPO over each group's valid rows: Â = (R − mean_valid) / (std_valid + ε), 0 on empty rows (arXiv 2402.03300)."""
  mu, sd = masked_group_stats(rewards, valid)
  return BatchAdvantages((rewards - mu) / (sd + EPS) * valid, {})


def tempo_advantages(tokens, mask, rewards, valid=None, **kw) -> BatchAdvantages:
  """TEMPO's token advantages [P, G, T]; on tree rollouts the centring and scale use the valid rows only."""
  raw = np.asarray(tempo(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(rewards), **dict(kw, norm_adv_by_std=False)))
  if valid is None:
    adv = np.asarray(tempo(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(rewards), **kw))
    mu = rewards.mean(1, keepdims=True)
  else:
    mu, sd = masked_group_stats(rewards, valid)
    adv = raw / (sd[..., None] + EPS)
  td = raw - (rewards - mu)[..., None] * (mask > 0)
  return BatchAdvantages(adv, {"tree_term_frac": nonzero_frac(td, mask)})


def treepo_advantages(rewards, paths, mask, valid, **kw) -> BatchAdvantages:
  """TreePO's subtree-averaged centred rewards, whitened (its defaults) [P, G, T]."""
  mu, _ = masked_group_stats(rewards, valid)
  raw = np.asarray(treepo(jnp.asarray(rewards), jnp.asarray(paths), jnp.asarray(mask), **dict(kw, whiten=False)))
  adv = np.asarray(treepo(jnp.asarray(rewards), jnp.asarray(paths), jnp.asarray(mask), **kw))
  return BatchAdvantages(adv, {"tree_term_frac": nonzero_frac(raw - (rewards - mu)[..., None] * (mask > 0), mask)})


def spo_tree_advantages(rewards, paths, mask) -> BatchAdvantages:
  """SPO-tree's edge advantages V(child) − V(parent) on the kept edges (best-of-4 rule) [P, G, T]."""
  adv, keep = spo_tree_token_advantages(np.asarray(rewards), np.asarray(paths), np.asarray(mask))
  adv = adv * keep
  return BatchAdvantages(adv, {"tree_term_frac": nonzero_frac(adv, mask)})


def spo_chain_advantages(mc, mask, rewards, **kw) -> BatchAdvantages:
  """SPO-chain's segment advantages V(c_k) − V(c_{k−1}) from Monte-Carlo values `mc` = (values, prompt
  values, token probabilities) (`rl_jax.mc_values.spo_chain_mc_values`). As the official code: confident
  tokens (p ≥ threshold) leave the loss, and the advantages are whitened over the remaining tokens (over
  every valid token when none remain)."""
  values, prompt_values, probs = mc
  m = jnp.asarray(mask, jnp.float32)
  raw, loss_mask = spo_chain(probs, m, values, jnp.asarray(rewards), prompt_values=prompt_values, **kw)
  wm = jnp.where(jnp.sum(loss_mask) > 0, loss_mask, m)
  adv = masked_whiten(raw, wm) * loss_mask
  return BatchAdvantages(np.asarray(adv), {"tree_term_frac": nonzero_frac(raw, mask)},
                         np.asarray(loss_mask, np.float32))


def batch_advantages(name: str, kw: dict, tokens, mask, rewards, *, paths=None, valid=None,
                     mc=None) -> BatchAdvantages:
  """The advantages of estimator `name` (keywords `kw`) for a batch: completion `tokens` and `mask`
  [P, G, T], `rewards` [P, G]; on tree rollouts their `paths` [P, G, D] and `valid` rows [P, G]; for
  SPO-chain its Monte-Carlo values `mc`. Raises a ValueError when the batch lacks what `name` reads."""
  rewards = np.asarray(rewards, np.float32)
  if name in PATH_ADVANTAGES and paths is None:
    raise ValueError(f"{name} reads the tree paths: it needs tree rollouts.")
  if paths is not None and name not in TREE_ADVANTAGES:
    raise ValueError(f"On tree rollouts the estimators are {TREE_ADVANTAGES}, got {name!r}.")
  if name == "tempo":
    return tempo_advantages(tokens, mask, rewards, valid, **kw)
  if name == "treepo":
    return treepo_advantages(rewards, paths, mask, valid, **kw)
  if name == "spo_tree":
    return spo_tree_advantages(rewards, paths, mask)
  if name == "spo_chain":
    if mc is None:
      raise ValueError("spo_chain needs its Monte-Carlo values (rl_jax.mc_values.spo_chain_mc_values).")
    return spo_chain_advantages(mc, mask, rewards, **kw)
  if paths is not None:
    return tree_grpo(rewards, valid)
  return BatchAdvantages(np.asarray(get(name)(jnp.asarray(rewards), **kw)), {})
