"""Text in and out of the token-level API for pretrained chat models.

`encode_prompts` renders questions with the tokenizer's chat template and left-pads them to a length
rounded up to `bucket` tokens, so that jitted sampling and training compile once per bucket instead
of once per batch. `decode_completions` turns sampled token rows back into strings.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

MATH_INSTRUCTION = "Solve the problem step by step. Write the final answer as a number after '####'."


def chat_text(tokenizer, question: str, *, instruction: Optional[str] = MATH_INSTRUCTION,
              system: Optional[str] = None) -> str:
  """The chat-templated prompt (generation prompt appended) for one question."""
  messages = [{"role": "system", "content": system}] if system else []
  content = question if not instruction else f"{question}\n{instruction}"
  messages.append({"role": "user", "content": content})
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def round_up(n: int, bucket: int) -> int:
  return -(-n // bucket) * bucket if bucket > 1 else n


def encode_prompts(tokenizer, texts: Sequence[str], *, bucket: int = 64, max_len: Optional[int] = None,
                   pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded ids [N, L] and mask, L = the longest prompt rounded up to `bucket`.

  Prompts longer than `max_len` are an error (they would be silently cut otherwise).
  """
  if not texts:
    raise ValueError("encode_prompts needs at least one prompt.")
  rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
  longest = max(map(len, rows))
  if max_len is not None and longest > max_len:
    raise ValueError(f"a prompt has {longest} tokens, more than max_len={max_len}.")
  width = round_up(longest, bucket)
  if max_len is not None:
    width = min(width, max_len)
  return left_pad(rows, width, pad_id)


def left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Token rows right-aligned in a [len(rows), width] int32 array (`pad_id` on the left) and their 0/1 mask."""
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = r
    mask[i, width - len(r):] = 1
  return ids, mask


def decode_completions(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
  """Text of each completion row (masked tokens dropped, special tokens skipped)."""
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  return [tokenizer.decode(t[m > 0].tolist(), skip_special_tokens=True) for t, m in zip(tokens, mask)]


def check_prompt_lengths(tokenizer, questions: Sequence[str], max_len: int, *,
                         instruction: Optional[str] = MATH_INSTRUCTION, system: Optional[str] = None) -> int:
  """The longest chat-templated prompt of `questions`, in tokens; a ValueError naming the first question
  longer than `max_len` (its index, length and start). Run it on a run's questions before loading a model,
  so that a too small prompt budget fails at once rather than at the first RL step."""
  if not questions:
    return 0
  texts = [chat_text(tokenizer, q, instruction=instruction, system=system) for q in questions]
  lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
  for i, n in enumerate(lengths):
    if n > max_len:
      raise ValueError(f"question {i} of {len(questions)} ({questions[i][:60]!r}...) is a {n}-token prompt, more "
                       f"than max_prompt_len={max_len} (the longest is {max(lengths)} tokens).")
  return max(lengths)
