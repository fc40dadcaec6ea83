"""Reward functions: math answer verification, format and length shaping, and a safe runner."""

from rl_jax.rewards.math import (answers_equivalent, as_fraction, extract_boxed, extract_gsm8k_answer, final_answer,
                                 format_reward, is_plain_number, math_reward, normalize_answer, parse_answer)
from rl_jax.rewards.runner import RewardRunner
from rl_jax.rewards.shaping import dapo_overlong_penalty, length_penalty
from rl_jax.rewards.consistency import majority_vote_rewards, paraphrase_consistency_rewards, token_f1
from rl_jax.rewards.group_shaping import (ada_grpo_rewards, curriculum_budget, curriculum_reward, effort_rewards,
                                          gcpo_rewards, grpo_lambda_rewards, kimi_length_reward)
