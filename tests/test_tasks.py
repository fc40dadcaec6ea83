"""Synthetic tasks: arithmetic and countdown generators and their exact verifiers."""

import pytest

from rl_jax.tasks import ArithmeticTask, CountdownTask, evaluate_expression


def test_arithmetic_verifier_and_encoding():
  task = ArithmeticTask(digits=2, ops="+-*", seed=1)
  problems = task.problems(20, stream=0, index=0)
  assert problems == task.problems(20, stream=0, index=0)  # reproducible data position
  v = task.vocab
  for prompt, answer in problems:
    a, op, b = prompt[:2], prompt[2], prompt[3:5]
    assert answer == str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])
    ids = v.encode(answer) + [v.EOS, v.PAD]
    assert task.reward(ids, answer) == 1.0
    assert task.reward(v.encode(answer + "1") + [v.EOS], answer) == 0.0
    assert task.reward(v.encode(answer), answer) == 0.0  # no EOS
  with pytest.raises(ValueError, match="not in the vocabulary"):
    v.encode("1/2")


def test_countdown_problems_are_solvable_and_verified_exactly():
  task = CountdownTask(count=4, seed=3)
  problems = task.problems(30, stream=0, index=0)
  assert all(len(n) == 4 and 0 < t <= 1000 for n, t in problems)
  assert CountdownTask.reward("(3 + 5) * 2", [2, 3, 5, 7], 16) == 1.0
  assert CountdownTask.reward("3 + 5 * 2", [2, 3, 5, 7], 16) == 0.0       # precedence: 13
  assert CountdownTask.reward("8 * 2", [2, 3, 5, 7], 16) == 0.0           # 8 is not available
  assert CountdownTask.reward("7 + 7 + 2", [2, 3, 5, 7], 16) == 0.0       # 7 used twice
  assert CountdownTask.reward("(7 - 5) / (3 - 2) * 8", [2, 3, 5, 7, 8], 16) == 1.0
  assert CountdownTask.reward("__import__('os')", [1], 1) == 0.0
  assert evaluate_expression("1/0") == (None, [])
  assert evaluate_expression("7 / 2")[0] == pytest.approx(3.5)
