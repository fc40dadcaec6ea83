"""Name → function registries (objectives, advantage estimators)."""

from __future__ import annotations

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
