"""A list of math questions as the RL loop's task: seeded draw order, chat prompts, verified rewards.

Records are {problem, answer} dicts (rl_jax.data). Step s draws questions s·P .. s·P + P − 1 of a seeded
permutation; dynamic-sampling refills read from the far end of it, so they never reuse another step's
questions. Rewards: 1 for a correct final answer (\\boxed{}, then '####', then the last number; numeric or
symbolic equivalence, `rl_jax.rewards.math_reward` under a time limit), plus an optional format bonus and DAPO's
overlong penalty counted in tokens (arXiv 2503.14476). The config `cfg` is an `rl_jax.loop.RLConfig` with
max_new_tokens, max_prompt_len, prompt_bucket, format_bonus and overlong_buffer.
"""

from __future__ import annotations

import numpy as np

from rl_jax import loop
from rl_jax.chat import chat_text, decode_completions, encode_prompts
from rl_jax.rewards import RewardRunner, dapo_overlong_penalty, format_reward, math_reward
from rl_jax.rewards.group_shaping import arm_format


class Rewarder:
  """Correctness (+ format bonus, + DAPO overlong penalty in tokens) for decoded completions."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.correct = RewardRunner(math_reward, timeout=5.0)

  def __call__(self, texts, answers, lengths, truncated) -> tuple[np.ndarray, np.ndarray]:
    correct = np.asarray(self.correct(texts, answers), np.float32)
    reward = correct.copy()
    if self.cfg.format_bonus:
      reward += self.cfg.format_bonus * np.asarray([format_reward(t, style="gsm8k") for t in texts], np.float32)
    if self.cfg.overlong_buffer:
      reward += np.asarray([dapo_overlong_penalty(int(n), max_len=self.cfg.max_new_tokens,
                                                  cache=self.cfg.overlong_buffer) for n in lengths], np.float32)
    return reward, correct


def train_order(cfg, n: int) -> np.ndarray:
  """The seeded order in which a run draws its n train questions."""
  return np.random.default_rng([cfg.seed, 7]).permutation(n)


def question_ids(cfg, order: np.ndarray, step: int, attempt: int) -> list[int]:
  """Train questions of RL step `step`, rollout batch `attempt` (0, or a dynamic-sampling refill)."""
  if attempt == 0:
    base = step * cfg.prompts_per_step
  else:  # dynamic-sampling refills read from the far end of the permutation, never another step's questions
    base = len(order) // 2 + (step * cfg.max_gen_batches + attempt) * cfg.prompts_per_step
  return [int(order[(base + i) % len(order)]) for i in range(cfg.prompts_per_step)]


def questions_used(cfg, order: np.ndarray) -> list[int]:
  """Every train question the run can draw (all of them when dynamic-sampling refills are unbounded or the prompts
  are sampled by pass rate)."""
  if (cfg.dynamic_sampling and cfg.max_gen_batches <= 0) or cfg.prompt_sampling:
    return sorted(int(i) for i in order)
  attempts = cfg.max_gen_batches if cfg.dynamic_sampling else 1
  return sorted({i for s in range(cfg.rl_steps) for a in range(attempts) for i in question_ids(cfg, order, s, a)})


class Questions:
  """The loop's task: train questions in a seeded order (chat prompts), scored by the Rewarder."""

  def __init__(self, cfg, tok, train, order: np.ndarray):
    self.cfg, self.tok, self.rewarder, self.train, self.order = cfg, tok, Rewarder(cfg), train, order
    self.max_new_tokens, self.stop_tokens, self.num_questions = cfg.max_new_tokens, (tok.eos_token_id,), len(self.train)
    self.response_formats = True   # ARM format tags (Ada-GRPO), read from the decoded completions

  def prompts(self, step: int, attempt: int) -> loop.Prompts:
    return self.prompts_for(question_ids(self.cfg, self.order, step, attempt))

  def prompts_for(self, ids) -> loop.Prompts:
    ids = [int(i) for i in ids]
    recs = [self.train[i] for i in ids]
    # dynamic sampling concatenates batches, so they all get one width
    bucket = self.cfg.max_prompt_len if self.cfg.dynamic_sampling else self.cfg.prompt_bucket
    tokens, mask = encode_prompts(self.tok, [chat_text(self.tok, r["problem"]) for r in recs], bucket=bucket,
                                  max_len=self.cfg.max_prompt_len)
    return loop.Prompts(tokens, mask, recs, np.array(ids))

  def score(self, ro, prompts: loop.Prompts) -> loop.Scored:
    g = self.cfg.group_size
    texts = decode_completions(self.tok, ro.completion, ro.completion_mask)
    lengths, truncated = ro.completion_mask.sum(1), ro.completion_mask[:, -1] > 0
    reward, correct = self.rewarder(texts, [r["answer"] for r in prompts.answers for _ in range(g)], lengths,
                                    truncated)
    row = {"train_accuracy": float(np.mean(correct)), "response_len": float(np.mean(lengths)),
           "truncated_frac": float(np.mean(truncated)), "reward_failures": self.rewarder.correct.last_failures}
    sample = {"question": prompts.answers[0]["problem"], "completion": texts[0], "correct": float(correct[0])}
    formats = np.array([arm_format(t) for t in texts]).reshape(-1, g)
    return loop.Scored(reward.reshape(-1, g), row, sample, correct=correct.reshape(-1, g), formats=formats)
