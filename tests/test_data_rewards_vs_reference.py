"""Prompt selection, replay, prefix retention and reward shaping of the seed methods against the float64 loop
references in tests/reference/data_rewards_np.py, on random inputs (hand examples: tests/test_seed_methods.py)."""

import random

import numpy as np
import pytest

from rl_jax import advantages, rewards
from rl_jax.data import curation
from rl_jax.rewards import entropy_budget
from reference import data_rewards_np as ref


def _group_rewards(seed, p=12, g=5):
  rng = np.random.default_rng(seed)
  r = rng.integers(0, 2, (p, g)).astype(np.float64)
  r[0], r[1] = 1.0, 0.0                                         # flat groups, all right and all wrong
  r[2] = rng.uniform(0.0, 0.04, g)                              # nearly flat, low
  r[3] = rng.normal(0.5, 0.3, g)                                # real-valued
  return r


@pytest.mark.parametrize("seed", range(4))
def test_variance_filter_and_replay_slots(seed):
  r = _group_rewards(seed)
  has = np.random.default_rng(seed + 10).integers(0, 2, r.shape[0]).astype(bool)
  for kw in (dict(), dict(min_std=0.3, max_mean=0.6), dict(min_std=0.0, max_mean=0.0)):
    np.testing.assert_array_equal(curation.variance_filter(r, **kw), ref.variance_filter(r, **kw))
  for kw in (dict(), dict(max_std=0.5, max_mean=0.7)):
    np.testing.assert_array_equal(curation.replay_slots(r, has, **kw), ref.replay_slots(r, has, **kw))
  assert any(ref.variance_filter(r)) and not all(ref.variance_filter(r))   # both outcomes occur


@pytest.mark.parametrize("seed", range(4))
def test_variance_promotion_weights(seed):
  rng = np.random.default_rng(seed)
  p = rng.integers(0, 9, 20) / 8.0                              # pass rates over 8 rollouts
  d = rng.uniform(0.0, 1.0, 20)
  for kw in (dict(), dict(alpha=2.0, beta=0.5, mix=0.8), dict(beta=1.0, mix=1.0), dict(mix=0.0)):
    got = curation.variance_promotion_weights(p, d if kw.get("beta") else None, **kw)
    want = ref.variance_promotion_weights(list(p), list(d) if kw.get("beta") else None, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert abs(sum(want) - 1.0) < 1e-12
  np.testing.assert_allclose(curation.variance_promotion_weights(np.ones(5)), ref.variance_promotion_weights([1.0] * 5))


def test_replay_buffer_update_sequence():
  rng = random.Random(3)
  buf_got, buf_want = {}, {}
  for step in range(30):
    tasks = [rng.choice("abc") for _ in range(6)]
    items = [f"s{step}_{i}" for i in range(6)]
    rs = [rng.choice([0.0, 0.05, 0.1, 0.5, 1.0]) for _ in range(6)]
    buf_got = curation.replay_buffer_update(buf_got, tasks, items, rs, size=3)
    buf_want = ref.replay_buffer_update(buf_want, tasks, items, rs, size=3)
    assert buf_got == buf_want
  assert buf_want and all(len(v) == 3 for v in buf_want.values())


@pytest.mark.parametrize("step", [0, 7, 33, 50, 80])
def test_prefix_retention(step):
  rng = np.random.default_rng(step)
  mask = (rng.uniform(size=(8, 11)) < 0.8).astype(np.float32)   # holes inside rows too: only valid tokens count
  mask[0] = 0.0
  for kw in (dict(), dict(start_frac=0.1, end_frac=0.7)):
    got = np.asarray(advantages.prefix_retention(mask, step=step, total_steps=50, **kw))
    np.testing.assert_array_equal(got, ref.prefix_retention(mask, step=step, total_steps=50, **kw))


def test_curriculum_budget_and_reward():
  for step in range(-2, 130, 3):
    for schedule in ("exponential", "linear"):
      got = rewards.curriculum_budget(step, start=4096, end=700, total_steps=120, schedule=schedule)
      want = ref.curriculum_budget(step, start=4096, end=700, total_steps=120, schedule=schedule)
      assert isinstance(got, int) and abs(got - want) <= 0.5 + 1e-9   # the nearest token count (a .5 tie either way)
  rng = random.Random(1)
  for _ in range(200):
    c, f, length, budget = rng.choice([0, 1]), rng.choice([0, 1]), rng.randint(0, 400), rng.randint(1, 300)
    kw = rng.choice([dict(), dict(w_correct=2.0, w_length=0.3, w_format=0.5)])
    assert rewards.curriculum_reward(c, length, f, budget=budget, **kw) == \
        pytest.approx(ref.curriculum_reward(c, length, f, budget=budget, **kw), abs=1e-12)


def test_majority_vote_and_paraphrase_consistency():
  rng = random.Random(7)
  for _ in range(300):
    answers = [rng.choice(["1", "2", "3", None]) for _ in range(rng.randint(1, 8))]
    assert rewards.majority_vote_rewards(answers) == ref.majority_vote_rewards(answers)
  words = ["a", "b", "c", "the", "x"]
  for _ in range(30):
    outputs = [[" ".join(rng.choice(words) for _ in range(rng.randint(0, 5))) for _ in range(rng.randint(1, 4))]
               for _ in range(rng.randint(2, 4))]
    got = rewards.paraphrase_consistency_rewards(outputs)
    want = ref.paraphrase_consistency_rewards(outputs)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)


def test_aepo_triggers_and_hierarchical_reward():
  rng = np.random.default_rng(11)
  for _ in range(100):
    n = int(rng.integers(1, 20))
    h = list(rng.uniform(0.0, 2.0, n))
    trig = list(rng.uniform(size=n) < 0.4)
    for kw in (dict(threshold=0.8), dict(threshold=1.2, window=2)):
      got = entropy_budget.window_entropy_triggers(h, trig, **kw)
      want = ref.window_entropy_triggers(h, trig, **kw)
      assert got[:2] == want[:2] and got[2] == pytest.approx(want[2], abs=1e-12)
  for difficulty in ("easy", "medium", "hard"):
    for correct in (True, False):
      for target in (0.0, 3.0, 10.0, 25.0):
        for count in range(0, 41, 3):
          for alpha in (0.5, 0.2):
            got = entropy_budget.hierarchical_entropy_reward(correct, difficulty, count, target, alpha=alpha)
            want = ref.hierarchical_entropy_reward(correct, difficulty, float(count), target, alpha=alpha)
            assert got == pytest.approx(want, abs=1e-12), (difficulty, correct, target, count, alpha)
