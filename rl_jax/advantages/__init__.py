"""Advantage estimators, credit assignment and token selection, as jit-able JAX functions.

Group layout: `rewards` is [P, G] (prompts x samples); sequence-level estimators return [P, G];
token-level estimators take `tokens` int32 [P, G, T] and `mask` [P, G, T] and return [P, G, T].
`get(name)` and `names()` work as for objectives. All outputs are stop-gradient constants.
"""

from rl_jax.advantages.core import get, names, register
from rl_jax.advantages.group import asymre, dr_grpo, grpo, ngrpo, opmd, rloo
from rl_jax.advantages.process import (d3s, d3s_schedule, gtpo_conflict, pure, spo_tree, thr, tree_node_values, treerl,
                                      xrpo_sharpen)
from rl_jax.advantages.selection import dars, forking_tokens, hicra, lp_reg, prefix_retention, seed_grpo, tw_grpo
from rl_jax.advantages.stateful import (RewardStats, ValueTracker, dcpo, init_reward_stats, init_value_tracker,
                                        single_stream, tracker_rho)
from rl_jax.advantages.structured import brpo, budget_prior, gigpo, rank_grpo, rank_rewards, s_grpo
from rl_jax.advantages.token import gae, hapo_tlga, masked_whiten, reinforce_pp, reinforce_pp_baseline
from rl_jax.advantages.tree import prefix_values, shared_prefix, spo_chain, spo_chain_cut_points, tempo, treepo
from rl_jax.advantages.span import zoom_zero
