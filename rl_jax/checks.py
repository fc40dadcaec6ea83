"""Checks of hyperparameters and masks shared by advantages, objectives and sampling.

They run on Python values at trace time, so they cost nothing under jit and never force a traced value to
be concrete; an array's contents are checked only when the array is concrete (not a tracer).
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np


def is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def check_hparam(name: str, value, *, low=None, high=None, strict: bool = False, integer: bool = False,
                 method: str = "") -> None:
  """Raises a ValueError naming `name` for a concrete scalar that is NaN or infinite, below `low` (at or below
  it when `strict`), above `high`, or, with `integer`, not an int. None and traced values pass."""
  if value is None or is_traced(value):
    return
  if np.ndim(value) == 0 and hasattr(value, "dtype"):   # a concrete NumPy / JAX scalar
    value = value.item()
  where = f"{method}: " if method else ""
  if integer and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
    raise ValueError(f"{where}{name} must be an int, got {value!r}.")
  if not isinstance(value, numbers.Real):
    return
  if not math.isfinite(value):
    raise ValueError(f"{where}{name} must be finite, got {value}.")
  if low is not None and (value <= low if strict else value < low):
    raise ValueError(f"{where}{name} must be {'>' if strict else '>='} {low}, got {value}.")
  if high is not None and value > high:
    raise ValueError(f"{where}{name} must be <= {high}, got {value}.")


def check_binary_mask(name: str, mask, *, method: str = "") -> None:
  """Raises a ValueError unless a concrete `mask` holds only 0 and 1 (bool, int or float).

  A mask selects tokens; it is not a weight. Other values (0.5, −1, NaN) are refused rather than read as
  `mask > 0`: per-token weights go in an objective's `token_weights`. A traced mask is not checked (under
  jit every nonzero entry counts as 1).
  """
  if mask is None or is_traced(mask):
    return
  m = np.asarray(mask)
  if m.dtype == bool or m.size == 0:
    return
  bad = ~((m == 0) | (m == 1))
  if bad.any():
    where = f"{method}: " if method else ""
    raise ValueError(f"{where}{name} must hold only 0 and 1, got {m[bad].ravel()[:3].tolist()} (use token_weights "
                     "for per-token weights).")


def check_token_ids(name: str, ids, vocab_size: int) -> None:
  """Raises a ValueError if a concrete integer array holds ids outside [0, vocab_size) (an embedding lookup
  there would read garbage silently). Traced arrays are not checked."""
  if ids is None or is_traced(ids):
    return
  a = np.asarray(ids)
  if not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{name} must hold integer token ids, got dtype {a.dtype}.")
  if a.size and (a.min() < 0 or a.max() >= vocab_size):
    raise ValueError(f"{name} holds token ids outside [0, {vocab_size}) (min {a.min()}, max {a.max()}).")


def check_sampling_args(vocab_size: int, *, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id) -> None:
  """The sampler's static arguments: temperature ≥ 0 (0 = greedy), top_p in (0, 1], top_k ≥ 0 (0 = off),
  max_new_tokens ≥ 1, stop tokens and pad_id inside the vocabulary."""
  check_hparam("temperature", temperature, low=0.0, method="generate")
  check_hparam("top_p", top_p, low=0.0, high=1.0, strict=True, method="generate")
  check_hparam("top_k", top_k, low=0, integer=True, method="generate")
  check_hparam("max_new_tokens", max_new_tokens, low=1, integer=True, method="generate")
  for t in tuple(stop_tokens) + (pad_id,):
    check_hparam("stop token / pad_id", t, low=0, high=vocab_size - 1, integer=True, method="generate")
