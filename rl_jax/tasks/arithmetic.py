"""Multi-digit arithmetic as a character-level language task with an exact verifier.

A prompt is "<bos>a+b=" and the correct completion is the digits of the result then "<eos>".
Problems are drawn from a seeded NumPy generator, so a data position (the number of batches
drawn) reproduces the stream exactly after a resume.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class CharVocab:
  """PAD = 0, BOS = 1, EOS = 2, then the characters of `chars`."""
  PAD, BOS, EOS = 0, 1, 2

  def __init__(self, chars: str = "0123456789+-*="):
    self.chars = chars
    self.index = {c: i + 3 for i, c in enumerate(chars)}

  @property
  def size(self) -> int:
    return len(self.chars) + 3

  def encode(self, text: str) -> list[int]:
    try:
      return [self.index[c] for c in text]
    except KeyError as e:
      raise ValueError(f"character {e.args[0]!r} is not in the vocabulary {self.chars!r}") from None

  def decode(self, ids) -> str:
    """Decodes until the first EOS/PAD; BOS is skipped."""
    out = []
    for i in ids:
      i = int(i)
      if i in (self.EOS, self.PAD):
        break
      if i >= 3:
        out.append(self.chars[i - 3])
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
  """a op b with operands of up to `digits` digits; op in `ops` ("+", "-", "*")."""
  digits: int = 2
  ops: str = "+"
  seed: int = 0
  pad_operands: bool = True    # "07+35=" instead of "7+35=": fixed-width operands align digits
  reverse_answer: bool = False  # answer written least-significant digit first (eases carries)

  def __post_init__(self):
    if self.digits < 1 or not self.ops or set(self.ops) - set("+-*"):
      raise ValueError(f"bad ArithmeticTask(digits={self.digits}, ops={self.ops!r}).")

  @property
  def vocab(self) -> CharVocab:
    return CharVocab()

  @property
  def prompt_len(self) -> int:
    return 2 * self.digits + 3  # <bos> a op b =

  @property
  def answer_len(self) -> int:
    """Longest answer in tokens, EOS included."""
    longest = 2 * self.digits + (1 if "-" in self.ops else 0)
    return longest + 1

  def problems(self, n: int, *, stream: int, index: int) -> list[tuple[str, str]]:
    """n (prompt text, answer text) pairs; (stream, index) select a reproducible batch."""
    rng = np.random.default_rng([self.seed, stream, index])
    hi = 10 ** self.digits
    a, b = rng.integers(0, hi, n), rng.integers(0, hi, n)
    ops = rng.choice(list(self.ops), n)
    return [self.problem(int(x), str(op), int(y)) for x, y, op in zip(a, b, ops)]

  def problem(self, x: int, op: str, y: int) -> tuple[str, str]:
    """The (prompt text, answer text) of x op y."""
    width = self.digits if self.pad_operands else 0
    value = str({"+": x + y, "-": x - y, "*": x * y}[op])
    if self.reverse_answer:
      value = value[::-1]
    return f"{x:0{width}d}{op}{y:0{width}d}=", value

  def encode_prompts(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids [N, prompt_len] and their mask."""
    v = self.vocab
    ids = np.zeros((len(prompts), self.prompt_len), np.int32)
    mask = np.zeros_like(ids)
    for row, text in enumerate(prompts):
      seq = [v.BOS] + v.encode(text)
      ids[row, -len(seq):] = seq
      mask[row, -len(seq):] = 1
    return ids, mask

  def encode_answers(self, answers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded answer ids [N, answer_len] (digits then EOS) and their mask."""
    v = self.vocab
    ids = np.zeros((len(answers), self.answer_len), np.int32)
    mask = np.zeros_like(ids)
    for row, text in enumerate(answers):
      seq = v.encode(text) + [v.EOS]
      ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = 1
    return ids, mask

  def reward(self, completion_ids, answer: str) -> float:
    """1.0 for the exact answer followed by EOS, else 0.0."""
    ids = [int(i) for i in completion_ids]
    v = self.vocab
    if v.EOS not in ids:
      return 0.0
    return float(v.decode(ids) == answer and ids.index(v.EOS) == len(answer))
