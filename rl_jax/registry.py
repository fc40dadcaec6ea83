"""Name → function registries (objectives, advantage estimators), and what each function needs.

A registered function declares its inputs in its signature: positional arguments are the data every
call passes, keyword-only arguments without a default are inputs the caller must supply (an
objective's `entropy`, `rollout_logp`, `group_size`, ...), keyword arguments with a default are its
hyperparameters. `needs`, `hyperparameters` and `check_keywords` read them; this module is the one
place that inspects signatures.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable


class Registry:
  """`register` adds a function under its own name; `get` raises a ValueError listing the known names."""

  def __init__(self, kind: str):
    self.kind = kind
    self._fns: dict[str, Callable] = {}

  def register(self, fn: Callable) -> Callable:
    self._fns[fn.__name__] = fn
    return fn

  def get(self, name: str) -> Callable:
    if name not in self._fns:
      raise ValueError(f"Unknown {self.kind} {name!r}; known: {self.names()}.")
    return self._fns[name]

  def names(self) -> list[str]:
    return sorted(self._fns)


@functools.lru_cache(maxsize=None)
def _parameters(fn: Callable) -> tuple:
  return tuple(inspect.signature(fn).parameters.values())


def takes(fn: Callable, name: str) -> bool:
  """Whether `fn` has a parameter called `name`."""
  return any(p.name == name for p in _parameters(fn))


def positional(fn: Callable) -> list[str]:
  """The required positional arguments (the data of every call), in order."""
  return [p.name for p in _parameters(fn) if p.default is p.empty
          and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def needs(fn: Callable) -> list[str]:
  """Keyword-only arguments without a default: inputs a caller must supply besides the positional data."""
  return [p.name for p in _parameters(fn) if p.default is p.empty and p.kind == p.KEYWORD_ONLY]


def hyperparameters(fn: Callable) -> dict:
  """Keyword arguments with a default: name -> default."""
  return {p.name: p.default for p in _parameters(fn) if p.default is not p.empty}


def accepts_any_keyword(fn: Callable) -> bool:
  """Whether `fn` takes **kwargs (then it forwards keywords, e.g. TIS / MIS to their base objective)."""
  return any(p.kind == p.VAR_KEYWORD for p in _parameters(fn))


def check_keywords(fn: Callable, keywords, what: str) -> None:
  """Raises a ValueError naming every keyword `fn` does not take, and the ones it does."""
  if accepts_any_keyword(fn):
    return
  known = {p.name for p in _parameters(fn)} - set(positional(fn))
  unknown = sorted(set(keywords) - known)
  if unknown:
    raise ValueError(f"{what} takes no {unknown}; its keywords are {sorted(known)}.")
