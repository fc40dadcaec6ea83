"""Math answer extraction and verification (GSM8K `#### n`, MATH-style `\\boxed{...}`, LaTeX answers).

Model text is untrusted: it is parsed by the closed grammar of `rl_jax.rewards.expr` (numbers,
arithmetic, fractions, roots, powers, logs, pi, symbols) into plain tuples and evaluated with
`fractions.Fraction` / `mpmath`, never by `eval`, `sympify` or `parse_expr`. Every step is bounded,
so one call takes milliseconds whatever the text (towers, huge literals and deep nesting score 0).

Equivalence (`answers_equivalent`):
  1. equal normalised strings (`normalize_answer`), e.g. `\\text{(B)}` and `(B)`;
  2. both rational: exact equality (`0.5` = `\\frac12`, `\\frac{1}{3}` ≠ `0.33`, `\\log_2 8` = `3`);
  3. otherwise numerically at 50 digits, with every free symbol set to the same fixed
     transcendental values on both sides (an identity test: `2\\sqrt{2}` = `\\sqrt{8}`,
     `x^2+2x+1` = `(x+1)^2`), equal when |a − b| ≤ 1e-30·max(1, |a|, |b|) at every point;
  4. `x = 3` against `3` compares the right-hand side; bare lists (`3, 5`) compare as multisets,
     bracketed ones (`(3, 5)`, `[1, 2)`) in order with their brackets.
Trailing units (`5\\text{ cm}`, `5 cm`), degrees, `\\%` and `\\$` are dropped before parsing.

Extraction (`final_answer`): the last `\\boxed{}`, else the number after GSM8K's `####`, else the
last math region (`$…$`, `\\(…\\)`, `\\[…\\]`) or plain number of the text, whichever comes last; a
plain number is used only when the gold answer is itself a plain number (`math_reward`), so the
digit inside "$\\frac{1}{2}$" or "$4\\pi$" can never stand in for the answer.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

import mpmath

from rl_jax.rewards import expr as E

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_PLAIN_NUMBER = re.compile(rf"\s*\$?\s*(?:{_NUMBER})\s*(?:\\?%)?\s*\.?\s*")
_MATH_REGION = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$\w])\$(?=\S)([^$]*?\S)\$(?!\d)", re.S)
_UNITS = re.compile(r"(?:(?:\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}|\s+[A-Za-z]{2,}\.?)"
                    r"(?:\s*\^\s*(?:\d|\{\d\}))?)+$")
MAX_LIST = 16


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
  """A canonical string form: no `$`, text wrappers, spacing macros, units marks or thousands commas."""
  s = ans.strip().strip("$").strip()
  s = re.sub(r"\\(?:text|mbox|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", s)
  for junk in ("\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "\\$", "^\\circ", "^{\\circ}", "\\%", "%",
               "\\displaystyle"):
    s = s.replace(junk, "")
  s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace(" ", "")
  s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators, all of them
  return s.rstrip(".")


def is_plain_number(text: str) -> bool:
  """True for answers like `42`, `-3.5`, `1,000`, `$12`, `50%` (no LaTeX, no letters)."""
  return _PLAIN_NUMBER.fullmatch(text) is not None


def final_answer(completion: str, *, last_number: bool = True) -> Optional[str]:
  """The completion's final answer: the last \\boxed{}, then '####', then the last math region or
  plain number (plain numbers only with `last_number=True`); None if there is none."""
  pred = extract_boxed(completion)
  if pred is None:
    pred = extract_gsm8k_answer(completion)
  if pred is not None:
    return pred
  regions = [(m.start(), m.end(), next(g for g in m.groups() if g is not None))
             for m in _MATH_REGION.finditer(completion)]
  last_region = regions[-1] if regions else None
  outside, cursor = [], 0
  for start, end, _ in regions:
    outside.append((cursor, completion[cursor:start]))
    cursor = end
  outside.append((cursor, completion[cursor:]))
  numbers = [(offset + m.start(), m.group()) for offset, chunk in outside for m in re.finditer(_NUMBER, chunk)]
  last_num = numbers[-1] if numbers else None
  if last_num is not None and (last_region is None or last_num[0] > last_region[0]):
    return last_num[1].rstrip(".,") if last_number else None
  return last_region[2].strip() if last_region is not None else None


def _clean(s: str) -> str:
  """Text ready for the grammar: units, degrees, percent, dollar signs and thousands commas removed."""
  s = s.strip().strip("$").strip().rstrip(".").strip()
  for junk in ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:"):
    s = s.replace(junk, " ")
  s = _UNITS.sub("", s) if re.search(r"[\d}]", s) else s
  s = re.sub(r"\\(?:text|mbox|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", s)
  for junk in ("\\$", "^\\circ", "^{\\circ}", "\\circ", "\\%", "%", "$"):
    s = s.replace(junk, "")
  return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s).strip()


def _split_top(s: str, sep: str) -> list[str]:
  """`s` split at `sep` characters outside (), [], {}."""
  parts, depth, cur = [], 0, []
  for ch in s:
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == sep and depth == 0:
      parts.append("".join(cur))
      cur = []
    else:
      cur.append(ch)
  parts.append("".join(cur))
  return parts


def parse_answer(text: str):
  """("list", items, brackets) | ("eq", lhs, rhs) | ("expr", tree); raises expr.ParseError."""
  s = _clean(text)
  brackets = ""
  if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and len(_split_top(s[1:-1], ",")) > 1:
    brackets, s = s[0] + s[-1], s[1:-1]
  items = _split_top(s, ",")
  if len(items) > MAX_LIST:
    raise E.ParseError("too many items")
  if len(items) > 1:
    return ("list", [parse_answer(item) for item in items], brackets)
  sides = _split_top(s, "=")
  if len(sides) > 2:
    sides = [sides[0], sides[-1]]
  if len(sides) == 2:
    return ("eq", E.parse(sides[0]), E.parse(sides[1]))
  return ("expr", E.parse(s))


_POINTS = ((mpmath.e / 3, mpmath.pi / 5), (mpmath.sqrt(2) + 1, -mpmath.euler), (mpmath.mpf(7) / 3 + mpmath.sqrt(3) / 10,
                                                                                  mpmath.log(5)))


def _env(names, point: int) -> dict:
  """Fixed transcendental values for the free symbols (the same on both sides of a comparison)."""
  a, b = _POINTS[point]
  return {name: a * (k + 1) + b / (k + 2) for k, name in enumerate(sorted(names))}


def values_equal(t1, t2) -> bool:
  """Exact equality of rational values, else agreement to 1e-30 at every test point (see module doc)."""
  try:
    return E.evaluate_exact(t1) == E.evaluate_exact(t2)
  except E.Unevaluable:
    return False
  except E.NotExact:
    pass
  names = E.symbols(t1) | E.symbols(t2)
  checked = 0
  with mpmath.workdps(50):
    for point in range(len(_POINTS) if names else 1):
      env = _env(names, point)
      try:
        a, b = E.evaluate_numeric(t1, env), E.evaluate_numeric(t2, env)
      except (E.Unevaluable, ZeroDivisionError, ValueError, OverflowError):
        continue
      if abs(a - b) > mpmath.mpf("1e-30") * max(1, abs(a), abs(b)):
        return False
      checked += 1
  return checked >= (2 if names else 1)


def _structures_equal(p, g) -> bool:
  if p[0] == "eq" and g[0] != "eq":
    return _structures_equal(("expr", p[2]), g)
  if g[0] == "eq" and p[0] != "eq":
    return _structures_equal(p, ("expr", g[2]))
  if p[0] != g[0]:
    return False
  if p[0] == "expr":
    return values_equal(p[1], g[1])
  if p[0] == "eq":
    return values_equal(p[1], g[1]) and values_equal(p[2], g[2])
  items_p, items_g = p[1], g[1]
  if len(items_p) != len(items_g):
    return False
  if p[2] or g[2]:                       # bracketed: ordered, same brackets (tuple, interval)
    return p[2] == g[2] and all(_structures_equal(a, b) for a, b in zip(items_p, items_g))
  unmatched = list(items_g)             # bare list of solutions: a multiset
  for a in items_p:
    hit = next((k for k, b in enumerate(unmatched) if _structures_equal(a, b)), None)
    if hit is None:
      return False
    unmatched.pop(hit)
  return True


def answers_equivalent(pred: Optional[str], target: str) -> bool:
  """True if `pred` and `target` denote the same answer (see the module docstring for the rules)."""
  if pred is None:
    return False
  if normalize_answer(pred) == normalize_answer(target):
    return True
  try:
    return _structures_equal(parse_answer(pred), parse_answer(target))
  except (E.ParseError, E.Unevaluable, E.NotExact, RecursionError, ValueError, ZeroDivisionError, OverflowError):
    return False


def math_reward(completion: str, answer: str) -> float:
  """1.0 if the completion's final answer (`final_answer`) equals `answer` (`answers_equivalent`).

  The last-number fallback is used only when `answer` is itself a plain number."""
  return float(answers_equivalent(final_answer(completion, last_number=is_plain_number(answer)), answer))


def format_reward(completion: str, *, style: str = "boxed") -> float:
  """1.0 if the completion states a final answer in the expected format ("boxed" or "gsm8k")."""
  if style == "boxed":
    return float(extract_boxed(completion) is not None)
  if style == "gsm8k":
    return float(extract_gsm8k_answer(completion) is not None)
  raise ValueError(f"Unknown style {style!r}; expected boxed or gsm8k.")


def as_fraction(text: str) -> Optional[Fraction]:
  """The exact rational value of an answer, or None (not rational, not parseable)."""
  try:
    parsed = parse_answer(text)
    return E.evaluate_exact(parsed[1]) if parsed[0] == "expr" else None
  except (E.ParseError, E.Unevaluable, E.NotExact, RecursionError, ValueError):
    return None
