"""Advantage estimators, credit assignment and token selection, as jit-able JAX functions.

Group layout: `rewards` is [P, G] (prompts x samples); sequence-level estimators return [P, G];
token-level estimators take `tokens` int32 [P, G, T] and `mask` [P, G, T] and return [P, G, T].
`get(name)` and `names()` work as for objectives.
"""

from rl_jax.advantages.core import get, names, register
from rl_jax.advantages.group import dr_grpo, grpo, ngrpo, rloo
