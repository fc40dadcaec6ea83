"""A tqdm progress bar that can be switched off (tests, logs) without changing the loop."""

from __future__ import annotations


class _Silent:
  def __init__(self, iterable):
    self.iterable = iterable

  def __iter__(self):
    return iter(self.iterable)

  def set_postfix(self, **_):
    pass


def progress(iterable, *, desc: str = "", enabled: bool = True):
  """A tqdm bar over `iterable` on process 0 when enabled; elsewhere the bare iterable."""
  from rl_jax.distributed import is_main_process
  if not enabled or not is_main_process():
    return _Silent(iterable)
  try:
    from tqdm.auto import tqdm
  except ImportError:  # pragma: no cover
    return _Silent(iterable)
  return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=True)
