"""Synthetic tasks with exact verifiers (generated in code, no data files)."""

from rl_jax.tasks.arithmetic import ArithmeticTask, CharVocab
from rl_jax.tasks.countdown import CountdownTask, evaluate_expression
