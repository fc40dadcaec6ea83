"""Math answer extraction and verification (GSM8K `#### n`, MATH-style `\\boxed{...}`).

Equivalence is checked numerically first (integers, decimals, fractions, percentages, thousands
separators), then symbolically with sympy on a light LaTeX-to-sympy rewrite (\\frac, \\sqrt, \\cdot,
^, \\pi, \\left/\\right). Anything sympy cannot parse is compared as a normalised string.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional


def extract_gsm8k_answer(text: str) -> Optional[str]:
  """The number after the last '####' (GSM8K's answer marker), commas and '$' removed."""
  if "####" not in text:
    return None
  tail = text.rsplit("####", 1)[1].strip()
  m = re.match(r"^[\$\s]*(-?[\d,]*\.?\d+)", tail)
  return m.group(1).replace(",", "") if m else (tail.split()[0] if tail else None)


def extract_boxed(text: str) -> Optional[str]:
  """Contents of the last \\boxed{...} (or \\fbox{...}), with nested braces."""
  starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
  if not starts:
    return None
  i = starts[-1]
  depth, j = 1, i
  while j < len(text) and depth:
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    j += 1
  return text[i:j - 1].strip() if depth == 0 else None


def normalize_answer(ans: str) -> str:
  s = ans.strip().strip("$").strip()
  s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
  s = re.sub(r"\\(?:mathrm|textbf|mathbf)\{([^}]*)\}", r"\1", s)
  for junk in ("\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "\\$", "^\\circ", "^{\\circ}", "\\%", "%"):
    s = s.replace(junk, "")
  s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace(" ", "")
  s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators, all of them
  return s.rstrip(".")


def _as_number(s: str) -> Optional[Fraction]:
  m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
  if m:
    return (-1 if m.group(1) else 1) * Fraction(int(m.group(2)), int(m.group(3)))
  m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
  if m and int(m.group(2)) != 0:
    return Fraction(int(m.group(1)), int(m.group(2)))
  try:
    return Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None


def _to_sympy(s: str):
  import sympy
  expr = s
  for _ in range(5):
    expr = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", expr)
    expr = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", expr)
  expr = expr.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi").replace("^", "**")
  expr = expr.replace("{", "(").replace("}", ")")
  if "\\" in expr:
    raise ValueError(f"unsupported LaTeX in {s!r}")
  from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations
  return parse_expr(expr, transformations=standard_transformations + (implicit_multiplication_application,),
                    evaluate=True)


def answers_equivalent(pred: Optional[str], target: str) -> bool:
  """True if `pred` and `target` denote the same value (numeric, symbolic, or normalised string)."""
  if pred is None:
    return False
  a, b = normalize_answer(pred), normalize_answer(target)
  if a == b:
    return True
  na, nb = _as_number(a), _as_number(b)
  if na is not None and nb is not None:
    return na == nb
  try:
    import sympy
    return bool(sympy.simplify(_to_sympy(a) - _to_sympy(b)) == 0)
  except Exception:
    return False


def final_answer(completion: str) -> Optional[str]:
  """The completion's final answer: \\boxed{} first, then '####', then the last number (None if none)."""
  pred = extract_boxed(completion)
  if pred is None:
    pred = extract_gsm8k_answer(completion)
  if pred is None:
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", completion)
    pred = numbers[-1].rstrip(".") if numbers else None
  return pred


def math_reward(completion: str, answer: str) -> float:
  """1.0 if the completion's final answer (\\boxed{} first, then '####', then the last number) matches."""
  return float(answers_equivalent(final_answer(completion), answer))


def format_reward(completion: str, *, style: str = "boxed") -> float:
  """1.0 if the completion states a final answer in the expected format ("boxed" or "gsm8k")."""
  if style == "boxed":
    return float(extract_boxed(completion) is not None)
  if style == "gsm8k":
    return float(extract_gsm8k_answer(completion) is not None)
  raise ValueError(f"Unknown style {style!r}; expected boxed or gsm8k.")
