"""Orbax checkpoints of a training run: state (params, optimizer, step, RNG), reference params and
the data position, one directory per RL step. Restoring needs a template pytree of the same
structure (shapes and dtypes), so optimizer states and NamedTuples come back as they were saved.

A checkpoint that fails to restore (corrupt or half-written) is skipped with a warning and the
previous one is used.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import signal
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

_STEP_DIR = re.compile(r"^step_(\d+)$")


class Restored(NamedTuple):
  path: pathlib.Path
  position: int
  checkpointer: "Checkpointer"

  def state(self, template):
    return self.checkpointer._restore(self.path / "state", template)

  def ref_params(self, template):
    path = self.path / "ref_params"
    return self.checkpointer._restore(path, template) if path.exists() else None

  def extra(self) -> dict:
    path = self.path / "extra.npz"
    return dict(np.load(path, allow_pickle=False)) if path.exists() else {}


class Checkpointer:
  def __init__(self, directory, *, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self.keep = keep
    self._ckpt = ocp.StandardCheckpointer()

  def steps(self) -> list[int]:
    if not self.directory.exists():
      return []
    found = [int(m.group(1)) for p in self.directory.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)

  def latest_path(self) -> Optional[pathlib.Path]:
    steps = self.steps()
    return self.directory / f"step_{steps[-1]}" if steps else None

  def save(self, position: int, state, ref_params=None, extra: Optional[dict] = None) -> pathlib.Path:
    """Writes step_<position>/ (state, ref_params, extra arrays) and marks it complete last."""
    path = self.directory / f"step_{position}"
    if path.exists():
      shutil.rmtree(path)
    path.mkdir(parents=True)
    self._ckpt.save(path / "state", state)
    if ref_params is not None:
      self._ckpt.save(path / "ref_params", ref_params)
    self._ckpt.wait_until_finished()
    if extra:
      np.savez(path / "extra.npz", **{k: np.asarray(v) for k, v in extra.items()})
    (path / "COMPLETE").write_text(str(position))
    for old in self.steps()[:-self.keep]:
      shutil.rmtree(self.directory / f"step_{old}", ignore_errors=True)
    return path

  def _restore(self, path, template):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return self._ckpt.restore(path, abstract)

  def restore_latest(self, template=None) -> Optional[Restored]:
    """The newest complete checkpoint that restores; older ones are tried after a failure."""
    for step in reversed(self.steps()):
      path = self.directory / f"step_{step}"
      if not (path / "COMPLETE").exists():
        warnings.warn(f"checkpoint {path} is incomplete; falling back to the previous one.")
        continue
      if template is not None:
        try:
          self._restore(path / "state", template)
        except Exception as e:  # corrupt files
          warnings.warn(f"checkpoint {path} could not be restored ({type(e).__name__}: {e}); "
                        "falling back to the previous one.")
          continue
      return Restored(path, step, self)
    return None


class SaveOnSigterm:
  """Context manager: on SIGTERM, call `save_fn()` (a final checkpoint), then exit with status 143."""

  def __init__(self, save_fn: Callable[[], None]):
    self.save_fn = save_fn
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      self.save_fn()
      raise SystemExit(128 + signum)

    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
