"""The math grader treats model text as data: no interpreter, bounded time, no reward for wrong answers."""

import builtins
import contextlib
import pathlib
import time
from fractions import Fraction

import jax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rl_jax import evaluation
from rl_jax.rewards import RewardRunner, answers_equivalent, final_answer, math_reward
from rl_jax.rewards import expr as E
from rl_jax.rewards import math as M

MARKER = "rl_jax_grader_pwned"


def _payloads(marker: pathlib.Path) -> list[str]:
  """Completions that would run code (or rewrite the verifier) if any part reached eval/sympify."""
  touch = f"__import__('os').system('touch {marker}')"
  return [
      rf"\boxed{{{touch}}}",
      rf"The answer is \boxed{{{touch} + 3}}",
      f"$${touch}$$",
      rf"\boxed{{exec(\"open('{marker}', 'w').write('x')\")}}",
      rf"\boxed{{eval('__import__(\"os\").system(\"touch {marker}\")')}}",
      rf"\boxed{{(lambda: __import__('os').system('touch {marker}'))()}}",
      r"\boxed{().__class__.__base__.__subclasses__()}",
      r"\boxed{__import__('rl_jax.rewards.math').rewards.math.__dict__.update(answers_equivalent=lambda *a: True)}",
      r"\boxed{Symbol('x').__class__.__init__.__globals__['__builtins__']['exec']('1')}",
      r"\boxed{x=__import__('os').getcwd()}",
      r"\boxed{\frac{__import__('os')}{2}}",
      rf"#### {touch}",
  ]


@contextlib.contextmanager
def no_interpreter():
  """Records any call of eval/exec/compile or of sympy's string parsers made inside the block."""
  calls = []

  def forbidden(name):
    def f(*args, **kwargs):
      calls.append(name)
      raise RuntimeError(f"the grader called {name}")
    return f

  targets = [(builtins, name) for name in ("eval", "exec", "compile")]
  try:
    import sympy
    import sympy.parsing.sympy_parser as sp
    targets += [(sympy, "sympify"), (sp, "parse_expr")]
  except ImportError:  # pragma: no cover - sympy absent: nothing to forbid
    pass
  saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
  for obj, name in targets:
    setattr(obj, name, forbidden(name))
  try:
    yield calls
  finally:
    for obj, name, value in saved:
      setattr(obj, name, value)


def test_code_payloads_score_zero_and_run_nothing(tmp_path):
  marker = tmp_path / MARKER
  with no_interpreter() as calls:
    scores = [(payload, math_reward(payload, gold)) for payload in _payloads(marker)
              for gold in ("0", "3", r"\frac{1}{2}", "x")]
  assert calls == []
  assert [p for p, score in scores if score != 0.0] == []
  assert not marker.exists()
  # the verifier was not rewritten: a wrong answer still scores 0 and a right one 1
  assert math_reward(r"\boxed{4}", "5") == 0.0 and M.answers_equivalent is answers_equivalent
  assert math_reward(r"\boxed{5}", "5") == 1.0


def test_ordinary_grading_uses_no_interpreter():
  with no_interpreter() as calls:
    scores = [math_reward(r"so \boxed{2\sqrt{2}}", r"\sqrt{8}"), math_reward(r"\boxed{x^2+2x+1}", "(x+1)^2"),
              math_reward(r"\boxed{\log_2 8}", "3"), math_reward("#### 72", "72")]
  assert calls == [] and scores == [1.0, 1.0, 1.0, 1.0]


def test_the_no_interpreter_guard_can_fail():
  with no_interpreter() as calls:
    with pytest.raises(RuntimeError):
      builtins.eval("1 + 1")
  assert calls == ["eval"]


@pytest.mark.parametrize("payload", [
    r"\boxed{9**9**9**9}", r"\boxed{9^{9^{9^9}}}", r"\boxed{1e100000000}", r"\boxed{10^{10^{10}}}",
    r"\boxed{2^{2^{2^{2^{2^{2}}}}}}", r"\boxed{1000000!}", r"\boxed{(10^{400})!}", r"\boxed{\frac{1}{0}}",
    r"\boxed{0^{-1}}", r"\boxed{\log_1 5}", r"\boxed{\sqrt{-1}}", "\\boxed{" + "9" * 10_000 + "}",
    "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "\\boxed{" + r"\sqrt{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{" + "x^" * 150 + "x}", "$" + "1+" * 100_000 + "1$", r"\boxed{\sin(10^{300})}",
    r"\boxed{(-8)^{\frac{1}{3}}}",
])
def test_huge_and_deep_answers_come_back_fast(payload):
  for gold in ("1", "9", "x"):
    t0 = time.perf_counter()
    score = math_reward(payload, gold)
    assert time.perf_counter() - t0 < 0.5, "a pathological answer must be rejected in milliseconds"
    assert score == 0.0


@pytest.mark.parametrize("completion, gold", [
    (r"The answer is $\frac{1}{2}$", "2"),          # the digit inside the fraction is not the answer
    (r"...so the area is $4\pi$", "4"),
    (r"$\sqrt{7}$", "7"),
    (r"The sum is \(\frac{3}{5}\).", "5"),
    (r"\boxed{0.3333333333}", r"\frac{1}{3}"),      # a decimal approximation is not the exact value
    (r"\boxed{(3, 5)}", "(5, 3)"),                   # ordered pairs keep their order
    (r"\boxed{[1, 2)}", "[1, 2]"),                   # intervals keep their brackets
    (r"\boxed{x=4}", "3"),
    (r"\boxed{3, 5}", "3"),
    (r"\boxed{5\text{ cm}}", "50"),
    (r"\boxed{\log_2 9}", "3"),
    (r"\boxed{x+1}", "x-1"),
    (r"\boxed{B}", "C"),
    (r"\boxed{2\pi}", r"2\pi + 10^{-20}"),       # numeric identity is tested at 50 digits
    ("The answer is 7, but with \\frac{1}{2} of 14 ...", r"\frac{1}{7}"),  # last-number fallback off for LaTeX golds
])
def test_wrong_answers_score_zero(completion, gold):
  assert math_reward(completion, gold) == 0.0


@pytest.mark.parametrize("completion, gold", [
    (r"\boxed{\frac12}", r"\frac{1}{2}"),
    (r"\boxed{x=3}", "3"),
    (r"\boxed{3, 5}", "5, 3"),
    (r"\boxed{5\text{ cm}}", "5"),
    (r"\boxed{5 \text{cm}^2}", "5"),
    (r"\boxed{\log_2 8}", "3"),
    (r"the answer is $\frac{1}{2}$", "0.5"),
    (r"\boxed{\sqrt[3]{-8}}", "-2"),
    (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{1}{2}\sqrt3"),
    (r"\boxed{2^{-1}}", "0.5"),
    (r"\boxed{1.5e3}", "1500"),
    (r"\boxed{\$12.50}", "12.5"),
    (r"\boxed{90^\circ}", "90"),
    (r"\boxed{-\frac{3}{4}}", "-0.75"),
    (r"\boxed{(x+1)(x-1)}", "x^2-1"),
    (r"\boxed{\frac{\pi}{4}}", r"\frac{1}{4}\pi"),
    (r"\boxed{[1, 2)}", r"[1,2)"),
    (r"\boxed{1,000,000}", "1000000"),
    ("She pays $18 + $5 = $23 in total.", "23"),      # currency dollars are not math delimiters
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    (r"\boxed{6!}", "720"),
    (r"\boxed{\left( 2, \frac{1}{3} \right)}", r"(2, \frac13)"),
])
def test_right_answers_score_one(completion, gold):
  assert math_reward(completion, gold) == 1.0


def test_final_answer_takes_what_comes_last():
  assert final_answer(r"First $x = 5$, then the total is 23.") == "23"
  assert final_answer(r"The total is 23, so $x = 5$") == "x = 5"
  assert final_answer("The total is 23.", last_number=False) is None
  assert final_answer("no numbers here") is None


def test_runner_counts_failures_per_call():
  def grader(text, gold):
    if text == "boom":
      raise RuntimeError("bad")
    return float(text == gold)

  runner = RewardRunner(grader, timeout=1.0)
  assert runner(["1", "boom", "2"], ["1", "1", "2"]) == [1.0, 0.0, 1.0] and runner.last_failures == 1
  assert runner(["1"], ["1"]) == [1.0] and runner.last_failures == 0 and len(runner.failures) == 1


def test_evaluation_grading_is_time_bounded(monkeypatch):
  """A reward function that hangs scores 0 after its timeout; the evaluation finishes and counts it."""
  texts = ["ok", "hang", "ok"]
  monkeypatch.setattr(evaluation, "sample_texts",
                      lambda *a, samples=0, **k: [[t] * max(samples, 1) for t in texts])
  monkeypatch.setattr("rl_jax.chat.chat_text", lambda tok, problem, instruction=None: problem)

  def hanging(text, gold):
    while text == "hang":
      time.sleep(0.01)
    return 1.0

  records = [{"problem": "p", "answer": "1"}] * 3
  t0 = time.perf_counter()
  res = evaluation.evaluate_math(None, None, None, records, jax.random.PRNGKey(0), reward_fn=hanging, grade_timeout=0.2)
  assert time.perf_counter() - t0 < 5
  assert res["greedy"] == pytest.approx(2 / 3) and res["grading_failures"] == 1


# ---- the grammar against an independent evaluator ---------------------------------------------------

@st.composite
def _expressions(draw, depth=3):
  """(LaTeX text, exact value) pairs built together, so the value never comes from the grader."""
  if depth == 0 or draw(st.booleans()):
    n = draw(st.integers(0, 999))
    return str(n), Fraction(n)
  op = draw(st.sampled_from(["+", "-", "*", "frac", "pow", "neg", "paren"]))
  a, va = draw(_expressions(depth=depth - 1))
  b, vb = draw(_expressions(depth=depth - 1))
  if op == "+":
    return f"{a} + {b}", va + vb
  if op == "-":
    return f"{a} - ({b})", va - vb
  if op == "*":
    return rf"({a}) \cdot ({b})", va * vb
  if op == "frac":
    return (rf"\frac{{{a}}}{{{b}}}", va / vb) if vb != 0 else (a, va)
  if op == "pow":
    k = draw(st.integers(0, 3))
    return f"({a})^{{{k}}}", va ** k
  if op == "neg":
    return f"-({a})", -va
  return f"\\left({a}\\right)", va


@given(_expressions())
def test_grammar_values_equal_an_independent_fraction_evaluation(pair):
  text, value = pair
  assert E.evaluate_exact(E.parse(text)) == value
  assert answers_equivalent(text, str(value.numerator) + (f"/{value.denominator}" if value.denominator != 1 else ""))
