"""A closed grammar for math answers: LaTeX / plain arithmetic text → a small expression tree.

Model-generated text is untrusted, so it is never handed to `eval`, `sympify`, `parse_expr` or any
other interpreter. This module tokenises the text itself, accepts only the grammar below, and builds
tuples of plain Python values; `evaluate_exact` and `evaluate_numeric` then walk those tuples with
`fractions.Fraction` and `mpmath`. Every step is bounded (text length, token count, nesting depth,
digit counts, exponent sizes), so a tower like `9^{9^{9^9}}` or `1e100000000` is rejected in
microseconds instead of running for minutes.

Grammar (whitespace ignored; `\\left`/`\\right`, `\\!`, `\\,` etc. stripped before tokenising):

  sum     := term (('+' | '-') term)*
  term    := signed (('*' | '\\cdot' | '\\times' | '/' | '\\div') signed | <implicit> postfix)*
  signed  := ('+' | '-') signed | postfix
  postfix := power '!'*
  power   := atom (('^' | '**') exponent)?        (right-associative)
  atom    := number | symbol | '(' sum ')' | '{' sum '}' | '|' sum '|'
           | '\\frac' arg arg | '\\sqrt' ('[' sum ']')? arg | '\\pi' | function arg
  function:= '\\sin' '\\cos' '\\tan' '\\ln' '\\exp' | '\\log' ('_' arg)?
  symbol  := one latin letter or a Greek command, optionally with a subscript '_' arg

Trees: ("num", Fraction) ("sym", name) ("pi",) ("neg", a) ("add", a, b) ("sub", a, b) ("mul", a, b)
("div", a, b) ("pow", a, b) ("root", a, n) ("fact", a) ("abs", a) ("log", base|None, a)
("fn", name, a).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

import mpmath

MAX_TEXT = 400          # characters of one answer
MAX_TOKENS = 300
MAX_DEPTH = 60
MAX_DIGITS = 400        # digits of one literal
MAX_EXP10 = 1000        # |exponent| of scientific notation; |log10| of any numeric intermediate
MAX_INT_BITS = 20_000   # bits of an exact intermediate (2^20000 ~ 6000 digits)
MAX_FACTORIAL = 500


class ParseError(ValueError):
  """The text is not in the grammar (or exceeds its bounds)."""


class NotExact(ValueError):
  """The value is not a rational number (irrational operation or free symbol)."""


class Unevaluable(ValueError):
  """The value is undefined or too large to evaluate within the bounds."""


_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
          "rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega").split()
_FUNCS = ("sin", "cos", "tan", "ln", "exp", "log")
_STRIP = (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", r"\displaystyle", r"\big", r"\Big")
_TOKEN = re.compile(r"\s*(?:(\\[a-zA-Z]+)|(\d)|(\*\*)|([a-zA-Z])|([.+\-*/^_(){}\[\]|!]))")


def tokenize(text: str) -> list[str]:
  """Tokens of `text`: LaTeX commands, single digits, '**', single letters, punctuation."""
  if len(text) > MAX_TEXT:
    raise ParseError(f"answer longer than {MAX_TEXT} characters")
  for junk in _STRIP:
    text = text.replace(junk, " ")
  tokens, pos = [], 0
  text = text.rstrip()
  while pos < len(text):
    m = _TOKEN.match(text, pos)
    if m is None:
      raise ParseError(f"unexpected character {text[pos:pos + 1]!r}")
    tokens.append(m.group(m.lastindex))
    pos = m.end()
    if len(tokens) > MAX_TOKENS:
      raise ParseError(f"more than {MAX_TOKENS} tokens")
  return [{r"\dfrac": r"\frac", r"\tfrac": r"\frac", r"\lbrace": "{", r"\rbrace": "}"}.get(t, t) for t in tokens]


class _Parser:
  """Recursive descent over `tokenize`'s output; see the module docstring for the grammar."""

  def __init__(self, tokens: list[str]):
    self.toks, self.i, self.depth = tokens, 0, 0

  def peek(self) -> Optional[str]:
    return self.toks[self.i] if self.i < len(self.toks) else None

  def take(self, expected: Optional[str] = None) -> str:
    tok = self.peek()
    if tok is None or (expected is not None and tok != expected):
      raise ParseError(f"expected {expected or 'more input'}, got {tok!r}")
    self.i += 1
    return tok

  def enter(self):
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise ParseError(f"nesting deeper than {MAX_DEPTH}")

  def parse(self):
    tree = self.sum()
    if self.peek() is not None:
      raise ParseError(f"unexpected {self.peek()!r}")
    return tree

  def sum(self):
    self.enter()
    tree = self.term()
    while self.peek() in ("+", "-"):
      op = "add" if self.take() == "+" else "sub"
      tree = (op, tree, self.term())
    self.depth -= 1
    return tree

  def term(self):
    tree = self.signed()
    while True:
      tok = self.peek()
      if tok in ("*", r"\cdot", r"\times"):
        self.take()
        tree = ("mul", tree, self.signed())
      elif tok in ("/", r"\div"):
        self.take()
        tree = ("div", tree, self.signed())
      elif self.starts_atom(tok):
        tree = ("mul", tree, self.postfix())   # implicit multiplication: 2x, 4\pi, 2\sqrt{2}
      else:
        return tree

  def signed(self):
    if self.peek() in ("+", "-"):
      self.enter()
      neg = self.take() == "-"
      tree = self.signed()
      self.depth -= 1
      return ("neg", tree) if neg else tree
    return self.postfix()

  def postfix(self):
    tree = self.power()
    while self.peek() == "!":
      self.take()
      tree = ("fact", tree)
    return tree

  def power(self):
    base = self.atom()
    if self.peek() in ("^", "**"):
      self.enter()
      exponent = self.arg() if self.take() == "^" else self.signed_power()
      self.depth -= 1
      return ("pow", base, exponent)
    return base

  def signed_power(self):
    if self.peek() in ("+", "-"):
      return ("neg", self.signed_power()) if self.take() == "-" else self.signed_power()
    return self.power()

  def starts_atom(self, tok) -> bool:
    return tok is not None and (tok.isdigit() or tok in ("(", "{") or
                                (len(tok) == 1 and tok.isalpha()) or
                                (tok.startswith("\\") and tok[1:] in _GREEK + list(_FUNCS) + ["frac", "sqrt", "pi"]))

  def arg(self):
    """A TeX macro argument: a braced group, or one token (digit, letter, command)."""
    tok = self.peek()
    if tok == "{":
      return self.group("{", "}")
    if tok is not None and tok.isdigit():
      return ("num", Fraction(int(self.take())))
    return self.power() if tok == "(" else self.atom()

  def group(self, open_, close):
    self.take(open_)
    tree = self.sum()
    self.take(close)
    return tree

  def number(self):
    digits = []
    while self.peek() is not None and (self.peek().isdigit() or (self.peek() == "." and "." not in digits)):
      digits.append(self.take())
    text = "".join(digits)
    if text in (".", "") or len(text) > MAX_DIGITS:
      raise ParseError(f"bad number {text[:20]!r}")
    value = Fraction(text)
    if self.peek() in ("e", "E") and self._scientific_follows():
      self.take()
      sign = -1 if self.peek() == "-" else 1
      if self.peek() in ("+", "-"):
        self.take()
      exp = []
      while self.peek() is not None and self.peek().isdigit() and len(exp) <= 6:
        exp.append(self.take())
      e = sign * int("".join(exp))
      if abs(e) > MAX_EXP10:
        raise ParseError(f"exponent {e} out of range")
      value *= Fraction(10) ** e
    return ("num", value)

  def _scientific_follows(self) -> bool:
    """'1e5', '2.5E-3': a literal letter e right after digits followed by an (optionally signed) integer."""
    nxt = self.toks[self.i + 1:self.i + 3]
    return bool(nxt) and (nxt[0].isdigit() or (nxt[0] in "+-" and len(nxt) == 2 and nxt[1].isdigit()))

  def atom(self):
    tok = self.peek()
    if tok is None:
      raise ParseError("unexpected end of answer")
    if tok.isdigit() or tok == ".":
      return self.number()
    if tok == "(":
      return self.group("(", ")")
    if tok == "{":
      return self.group("{", "}")
    if tok == "|":
      return ("abs", self.group("|", "|"))
    if len(tok) == 1 and tok.isalpha():
      return self.symbol(self.take())
    if tok.startswith("\\"):
      return self.command(self.take()[1:])
    raise ParseError(f"unexpected {tok!r}")

  def symbol(self, name: str):
    if self.peek() == "_":
      self.take()
      sub = self.take() if self.peek() != "{" else "".join(self._braced_tokens())
      if not re.fullmatch(r"[A-Za-z0-9]{1,8}", sub):
        raise ParseError(f"bad subscript {sub!r}")
      name = f"{name}_{sub}"
    return ("sym", name)

  def _braced_tokens(self) -> list[str]:
    self.take("{")
    out = []
    while self.peek() not in ("}", None):
      out.append(self.take())
    self.take("}")
    return out

  def command(self, name: str):
    self.enter()
    try:
      if name == "frac":
        return ("div", self.arg(), self.arg())
      if name == "sqrt":
        index = self.group("[", "]") if self.peek() == "[" else ("num", Fraction(2))
        return ("root", self.arg(), index)
      if name == "pi":
        return ("pi",)
      if name == "log":
        base = None
        if self.peek() == "_":
          self.take()
          base = self.arg()
        return ("log", base, self.arg())
      if name in _FUNCS:
        return ("fn", name, self.arg())
      if name in _GREEK:
        return self.symbol("\\" + name)
      raise ParseError(f"unsupported command \\{name}")
    finally:
      self.depth -= 1


def parse(text: str):
  """The expression tree of `text`, or ParseError. Never evaluates anything."""
  tokens = tokenize(text)
  if not tokens:
    raise ParseError("empty answer")
  return _Parser(tokens).parse()


def _check_bits(x: Fraction) -> Fraction:
  if x.numerator.bit_length() > MAX_INT_BITS or x.denominator.bit_length() > MAX_INT_BITS:
    raise Unevaluable("exact value too large")
  return x


def _exact_pow(base: Fraction, exponent: Fraction) -> Fraction:
  if exponent.denominator != 1:
    root = _exact_root(base, exponent.denominator)
    return _exact_pow(root, Fraction(exponent.numerator))
  e = exponent.numerator
  if base == 0 and e < 0:
    raise Unevaluable("0 to a negative power")
  if base in (0, 1) or e == 0:
    return Fraction(1) if e == 0 else base
  if base == -1:
    return Fraction(-1 if e % 2 else 1)
  size = max(base.numerator.bit_length(), base.denominator.bit_length())
  if abs(e) * size > MAX_INT_BITS:
    raise Unevaluable("power too large")
  return base ** e


def _exact_root(x: Fraction, n: int) -> Fraction:
  """The exact n-th root of a rational, or NotExact when it is irrational."""
  if n <= 0 or n > 64:
    raise NotExact("root index")
  if x < 0 and n % 2 == 0:
    raise Unevaluable("even root of a negative number")
  sign = -1 if x < 0 else 1

  def iroot(k: int) -> int:
    r = int(round(abs(k) ** (1.0 / n))) if k.bit_length() < 1000 else _iroot_newton(k, n)
    for c in (r - 1, r, r + 1):
      if c >= 0 and c ** n == k:
        return c
    raise NotExact("irrational root")

  return sign * Fraction(iroot(abs(x.numerator)), iroot(x.denominator))


def _iroot_newton(k: int, n: int) -> int:
  r = 1 << ((k.bit_length() + n - 1) // n)
  while True:
    s = ((n - 1) * r + k // r ** (n - 1)) // n
    if s >= r:
      return r
    r = s


def evaluate_exact(tree) -> Fraction:
  """The rational value of `tree` (NotExact for symbols, pi, irrational roots, logs, functions)."""
  kind = tree[0]
  if kind == "num":
    return _check_bits(tree[1])
  if kind in ("sym", "pi", "log", "fn"):
    if kind == "log" and tree[1] is not None:
      return _exact_log(evaluate_exact(tree[1]), evaluate_exact(tree[2]))
    raise NotExact(kind)
  if kind == "neg":
    return -evaluate_exact(tree[1])
  if kind == "abs":
    return abs(evaluate_exact(tree[1]))
  if kind == "fact":
    n = evaluate_exact(tree[1])
    if n.denominator != 1 or n < 0 or n > MAX_FACTORIAL:
      raise Unevaluable("factorial argument")
    out = 1
    for k in range(2, int(n) + 1):
      out *= k
    return Fraction(out)
  if kind == "root":
    index = evaluate_exact(tree[2])
    if index.denominator != 1:
      raise NotExact("root index")
    return _exact_root(evaluate_exact(tree[1]), int(index))
  a, b = evaluate_exact(tree[1]), evaluate_exact(tree[2])
  if kind == "add":
    return _check_bits(a + b)
  if kind == "sub":
    return _check_bits(a - b)
  if kind == "mul":
    return _check_bits(a * b)
  if kind == "div":
    if b == 0:
      raise Unevaluable("division by zero")
    return _check_bits(a / b)
  if kind == "pow":
    return _exact_pow(a, b)
  raise ParseError(f"unknown node {kind}")


def _exact_log(base: Fraction, x: Fraction) -> Fraction:
  """log_base(x) when it is an integer or the reciprocal of one (log_2 8 = 3, log_8 2 = 1/3)."""
  if base <= 0 or base == 1 or x <= 0:
    raise Unevaluable("logarithm domain")
  for b, y, invert in ((base, x, False), (x, base, True)):
    if y == 1:
      return Fraction(0)
    k, p = 0, Fraction(1)
    while (abs(p) < abs(y) if abs(b) > 1 else abs(p) > abs(y)) and k < 64:
      p, k = p * b, k + 1
    if p == y:
      return Fraction(1, k) if invert else Fraction(k)
  raise NotExact("irrational logarithm")


def evaluate_numeric(tree, env: dict[str, object], dps: int = 50):
  """The value of `tree` as an mpmath number at `dps` digits, symbols taken from `env`."""
  with mpmath.workdps(dps):
    return _numeric(tree, env)


def _bounded(x):
  if x != 0 and mpmath.isfinite(x) and abs(mpmath.log10(abs(x))) > MAX_EXP10:
    raise Unevaluable("magnitude out of range")
  if not mpmath.isfinite(x):
    raise Unevaluable("not finite")
  return x


def _real_negative(x) -> bool:
  return mpmath.im(x) == 0 and mpmath.re(x) < 0


def _numeric(tree, env):
  kind = tree[0]
  if kind == "num":
    return _bounded(mpmath.mpf(tree[1].numerator) / tree[1].denominator)
  if kind == "sym":
    if tree[1] not in env:
      raise Unevaluable(f"no value for {tree[1]}")
    return env[tree[1]]
  if kind == "pi":
    return +mpmath.pi
  if kind in ("neg", "abs", "fact", "fn"):
    a = _numeric(tree[-1], env)
    if kind == "neg":
      return -a
    if kind == "abs":
      return abs(a)
    if kind == "fact":
      if abs(a) > MAX_FACTORIAL or (_real_negative(a) and a == mpmath.floor(mpmath.re(a))):
        raise Unevaluable("factorial argument")
      return _bounded(mpmath.gamma(a + 1))
    if abs(a) > 10 ** 6:
      raise Unevaluable("function argument too large")
    return _bounded(getattr(mpmath, {"ln": "log"}.get(tree[1], tree[1]))(a))
  if kind == "log":
    x = _numeric(tree[2], env)
    base = mpmath.e if tree[1] is None else _numeric(tree[1], env)
    if x == 0 or base == 0 or base == 1:
      raise Unevaluable("logarithm domain")
    return _bounded(mpmath.log(x) / mpmath.log(base))
  a, b = _numeric(tree[1], env), _numeric(tree[2], env)
  if kind == "add":
    return _bounded(a + b)
  if kind == "sub":
    return _bounded(a - b)
  if kind == "mul":
    return _bounded(a * b)
  if kind == "div":
    if b == 0:
      raise Unevaluable("division by zero")
    return _bounded(a / b)
  if kind in ("pow", "root"):
    if kind == "root":
      if b == 0:
        raise Unevaluable("zeroth root")
      a, b = a, 1 / b
    if a == 0:
      if mpmath.re(b) <= 0:
        raise Unevaluable("0 to a non-positive power")
      return mpmath.mpf(0)
    if abs(b) * abs(mpmath.log10(abs(a))) > MAX_EXP10:
      raise Unevaluable("power too large")
    if kind == "root" and _real_negative(a) and mpmath.im(b) == 0:
      n = 1 / b
      if n == mpmath.floor(n) and int(n) % 2 == 1:
        return -((-a) ** b)     # real odd root of a negative number
    return _bounded(mpmath.power(a, b))
  raise ParseError(f"unknown node {kind}")


def symbols(tree) -> set[str]:
  """The free symbols of `tree`."""
  if tree[0] == "sym":
    return {tree[1]}
  out = set()
  for child in tree[1:]:
    if isinstance(child, tuple):
      out |= symbols(child)
  return out
