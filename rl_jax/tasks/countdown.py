"""Countdown: combine the given numbers with + − × ÷ (each at most once) to reach a target.

Problems are generated in code from a seeded generator (a target that is reachable by construction);
the verifier parses the proposed arithmetic expression safely (an AST walk, no eval) and checks the
numbers it uses and its exact value (fractions).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections import Counter
from fractions import Fraction
from typing import Optional

import numpy as np

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def evaluate_expression(text: str) -> tuple[Optional[Fraction], list[int]]:
  """(exact value, integer literals used) of an arithmetic expression, or (None, []) if it is not one."""
  text = text.replace("×", "*").replace("÷", "/").replace("−", "-").strip()
  if not text or len(text) > 200 or not re.fullmatch(r"[\d\s+\-*/()]+", text):
    return None, []
  try:
    tree = ast.parse(text, mode="eval")
  except SyntaxError:
    return None, []
  used: list[int] = []

  def walk(node) -> Fraction:
    if isinstance(node, ast.Expression):
      return walk(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
      used.append(node.value)
      return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      left, right = walk(node.left), walk(node.right)
      if isinstance(node.op, ast.Div) and right == 0:
        raise ZeroDivisionError
      return _OPS[type(node.op)](left, right)
    raise ValueError("unsupported expression")

  try:
    return walk(tree), used
  except (ValueError, ZeroDivisionError):
    return None, []


@dataclasses.dataclass(frozen=True)
class CountdownTask:
  """`count` numbers in [1, max_number]; the target is the value of a random expression over a subset."""
  count: int = 4
  max_number: int = 25
  seed: int = 0

  def problems(self, n: int, *, stream: int, index: int) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng([self.seed, stream, index])
    out = []
    while len(out) < n:
      nums = [int(x) for x in rng.integers(1, self.max_number + 1, self.count)]
      k = int(rng.integers(2, self.count + 1))
      chosen = [nums[i] for i in rng.permutation(self.count)[:k]]
      value = Fraction(chosen[0])
      for x in chosen[1:]:
        op = rng.choice(["+", "-", "*"])
        value = {"+": value + x, "-": value - x, "*": value * x}[op]
      if value.denominator == 1 and 0 < value <= 1000:
        out.append((nums, int(value)))
    return out

  @staticmethod
  def prompt(nums: list[int], target: int) -> str:
    return f"Using the numbers {nums}, each at most once, with + - * /, make {target}. Answer with the expression."

  @staticmethod
  def reward(expression: str, nums: list[int], target: int) -> float:
    """1.0 if the expression's value is exactly `target` and it uses only the given numbers, each at most once."""
    value, used = evaluate_expression(expression)
    if value is None or value != target:
      return 0.0
    available = Counter(nums)
    return float(all(available[x] >= c for x, c in Counter(used).items()))
