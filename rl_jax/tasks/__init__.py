"""Synthetic tasks with exact verifiers (generated in code, no data files)."""

from rl_jax.tasks.arithmetic import ArithmeticTask, CharVocab
