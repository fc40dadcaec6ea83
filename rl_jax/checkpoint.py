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


class RunDirBusy(RuntimeError):
  """Another live process holds the run directory."""


class RunLock:
  """Context manager: exclusive use of a run directory by one process.

  Two processes resuming the same run dir would interleave checkpoints, metrics and summaries. The lock
  is `<run_dir>/run.lock` (`run.<i>.lock` for process i > 0 of a multi-host job, whose workers may share a
  file system), created atomically (O_EXCL) with the owner's host and pid, and removed on exit
  (exceptions and SIGTERM's SystemExit included). A lock left by a process that no longer runs on this host
  (killed with SIGKILL, OOM) is taken over; one from another host cannot be checked and raises, naming the
  file to delete if that run is known to be dead.
  """

  def __init__(self, run_dir, process: int = 0):
    self.path = pathlib.Path(run_dir) / ("run.lock" if process == 0 else f"run.{process}.lock")
    self._mine = False

  def _owner(self) -> tuple[str, int] | None:
    try:
      host, pid = self.path.read_text().split()
      return host, int(pid)
    except (FileNotFoundError, ValueError):
      return None

  def __enter__(self):
    import os
    import socket
    import time
    self.path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for _ in range(50):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        owner = self._owner()
        if owner is None:   # just created and not written yet, or left empty by a crash: wait, then take it
          if time.time() - self._mtime() > 5.0:
            self.path.unlink(missing_ok=True)
          time.sleep(0.1)
          continue
        if owner[0] != host:
          raise RunDirBusy(f"{self.path.parent} is in use by pid {owner[1]} on host {owner[0]} (delete "
                           f"{self.path} if that run is dead).")
        if _alive(owner[1]):
          raise RunDirBusy(f"{self.path.parent} is in use by pid {owner[1]} on this host; wait for it, or use "
                           "another run_dir.")
        warnings.warn(f"taking over {self.path}: its owner (pid {owner[1]}) is no longer running")
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, "w") as f:
        f.write(f"{host} {os.getpid()}")
      self._mine = True
      return self
    raise RunDirBusy(f"could not take {self.path}")

  def _mtime(self) -> float:
    try:
      return self.path.stat().st_mtime
    except FileNotFoundError:
      return float("inf")

  def __exit__(self, *exc):
    import os
    import socket
    if self._mine and self._owner() == (socket.gethostname(), os.getpid()):
      self.path.unlink(missing_ok=True)
    self._mine = False
    return False


def _alive(pid: int) -> bool:
  import os
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:         # exists, owned by someone else
    return True
  return True
