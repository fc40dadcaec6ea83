"""Math verification, shaping, the safe reward runner and evaluation metrics."""

import json
import time
from itertools import combinations

import numpy as np
import pytest

from rl_jax.evaluation import avg_at_k, maj_at_k, pass_at_k
from rl_jax.rewards import (RewardRunner, answers_equivalent, dapo_overlong_penalty, extract_boxed,
                            extract_gsm8k_answer, format_reward, math_reward)



def test_extraction():
  assert extract_gsm8k_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
  assert extract_gsm8k_answer("#### $-5.5 dollars") == "-5.5"
  assert extract_gsm8k_answer("no marker 12") is None
  assert extract_boxed(r"thus \boxed{\frac{1}{2}} and finally \boxed{\sqrt{x^{2}+1}}") == r"\sqrt{x^{2}+1}"
  assert extract_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize("pred, target, same", [
    ("0.5", r"\frac{1}{2}", True), (r"\dfrac{3}{4}", "0.75", True), ("1,000", "1000", True),
    ("109,200,000", "109200000", True), ("50\\%", "50", True),
    (r"2\sqrt{2}", r"\sqrt{8}", True), (r"x^2+2x+1", r"(x+1)^2", True), (r"\frac{\pi}{2}", r"\pi/2", True),
    ("3", "4", False), (r"\frac{1}{3}", "0.33", False), ("x+1", "x-1", False), (None, "1", False),
    (r"\text{(B)}", "(B)", True),
])
def test_equivalence(pred, target, same):
  assert answers_equivalent(pred, target) is same


def test_math_reward_on_real_gsm8k_solutions(data_root):
  path = data_root / "gsm8k" / "test.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()[:50]]
  for row in rows:
    gold = extract_gsm8k_answer(row["answer"])
    assert math_reward(row["answer"], gold) == 1.0             # the reference solution verifies
    assert math_reward(f"The answer is \\boxed{{{gold}}}.", gold) == 1.0
    assert math_reward(f"#### {int(float(gold)) + 1}", gold) == 0.0
  assert format_reward("... #### 5", style="gsm8k") == 1.0 and format_reward("5", style="boxed") == 0.0


def test_math500_boxed_answers_verify_against_their_solutions(data_root):
  path = data_root / "eval" / "math500.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()[:40]]
  ok = sum(math_reward(r["solution"], r["answer"]) for r in rows)
  assert ok >= 0.9 * len(rows)


def test_dapo_overlong_examples():
  kw = dict(max_len=20480, cache=4096)
  assert dapo_overlong_penalty(16384, **kw) == 0.0
  assert dapo_overlong_penalty(18432, **kw) == -0.5
  assert dapo_overlong_penalty(20480, **kw) == -1.0
  assert dapo_overlong_penalty(21000, **kw) == -1.0
  assert dapo_overlong_penalty(21000, cap=False, **kw) == pytest.approx(-1.127, abs=1e-3)


def test_runner_contains_exceptions_and_hangs():
  def flaky(x):
    if x == "boom":
      raise RuntimeError("bad reward")
    if x == "hang":
      while True:
        time.sleep(0.01)
    return 1.0

  runner = RewardRunner(flaky, timeout=0.2)
  t0 = time.perf_counter()
  assert runner(["a", "boom", "hang", "b"]) == [1.0, 0.0, 0.0, 1.0]
  assert time.perf_counter() - t0 < 5
  assert [i for i, _ in runner.failures] == [1, 2] and "timeout" in runner.failures[1][1]


def test_pass_at_k_is_the_unbiased_estimator():
  for n, c, k in [(10, 3, 1), (10, 3, 5), (8, 0, 4), (8, 8, 2), (5, 2, 5)]:
    correct = [1] * c + [0] * (n - c)
    exact = np.mean([any(correct[i] for i in s) for s in combinations(range(n), k)])  # all k-subsets
    assert pass_at_k(n, c, k) == pytest.approx(exact)
  with pytest.raises(ValueError):
    pass_at_k(4, 5, 1)
  assert avg_at_k([True, False, True, True], 4) == 0.75
  assert maj_at_k(["3", "4", "3", None], lambda a: a == "3", 4) == 1.0
  assert maj_at_k(["4", "3", "3", "4"], lambda a: a == "3", 4) == 0.0  # tie → first seen ("4")
