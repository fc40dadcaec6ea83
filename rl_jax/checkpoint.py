"""Orbax checkpoints of a training run: state (params, optimizer, step, RNG), reference params and
the data position, one directory per RL step. Restoring needs a template pytree of the same
structure (shapes and dtypes), so optimizer states and NamedTuples come back as they were saved.

A checkpoint is chosen only after every item in it (state, reference params, extra arrays) restored: one
that is half-written (no COMPLETE marker) or corrupt is skipped with a warning and the previous one is
used; when every complete checkpoint fails, `restore_latest` raises `CorruptCheckpoints` instead of
letting the run restart silently.
"""

from __future__ import annotations

import contextlib
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


class CorruptCheckpoints(RuntimeError):
  """Checkpoints marked complete exist, and none of them restores."""


class Restored(NamedTuple):
  path: pathlib.Path
  position: int
  checkpointer: "Checkpointer"
  verified: dict = {}   # item -> the pytree restored while verifying (with the caller's template)

  def state(self, template):
    if "state" in self.verified:
      return self.verified["state"]
    return self.checkpointer._restore(self.path / "state", template)

  def ref_params(self, template):
    if "ref_params" in self.verified:
      return self.verified["ref_params"]
    path = self.path / "ref_params"
    return self.checkpointer._restore(path, template) if path.exists() else None

  def extra(self) -> dict:
    path = self.path / "extra.npz"
    return _load_npz(path) if path.exists() else {}


def _load_npz(path) -> dict:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}      # reads every array: a truncated file fails here


class Checkpointer:
  """step_<position>/ directories under `directory`; after each save the `keep` newest up to the one just
  written stay (older ones, and any past it, are removed). `saved` is the position whose complete checkpoint
  this object last wrote or chose (None before), so a final save can be skipped when it would repeat it."""

  def __init__(self, directory, *, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep must be >= 1 (the checkpoint just written is always kept), got {keep}.")
    self.directory = pathlib.Path(directory).absolute()
    self.keep = keep
    self.saved: Optional[int] = None
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
    self.saved = position
    for old in stale_steps(self.steps(), position, self.keep):
      shutil.rmtree(self.directory / f"step_{old}", ignore_errors=True)
    return path

  def _restore(self, path, template):
    if template is None:
      return self._ckpt.restore(path)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return self._ckpt.restore(path, abstract)

  def verify(self, path, template=None, ref_template=None) -> dict:
    """Restores every item of the checkpoint at `path` (raises on the first that fails); returns
    {item: pytree} for the items restored with a template. `ref_template` defaults to template.params."""
    if ref_template is None:
      ref_template = getattr(template, "params", None)
    verified = {}
    state = self._restore(path / "state", template)
    if template is not None:
      verified["state"] = state
    if (path / "ref_params").exists():
      ref = self._restore(path / "ref_params", ref_template)
      if ref_template is not None:
        verified["ref_params"] = ref
    if (path / "extra.npz").exists():
      _load_npz(path / "extra.npz")
    return verified

  def restore_latest(self, template=None, ref_template=None) -> Optional[Restored]:
    """The newest complete checkpoint all of whose items restore; older ones are tried after a failure.
    None when no checkpoint is complete; CorruptCheckpoints when complete ones exist and none restores."""
    failures = []
    for step in reversed(self.steps()):
      path = self.directory / f"step_{step}"
      if not (path / "COMPLETE").exists():
        warnings.warn(f"checkpoint {path} is incomplete; falling back to the previous one.")
        continue
      try:
        verified = self.verify(path, template, ref_template)
      except Exception as e:  # corrupt or truncated files
        failures.append(f"{path.name}: {type(e).__name__}: {str(e)[:200]}")
        warnings.warn(f"checkpoint {path} could not be restored ({type(e).__name__}: {e}); "
                      "falling back to the previous one.")
        continue
      self.saved = step
      return Restored(path, step, self, verified)
    if failures:
      raise CorruptCheckpoints(
          f"every complete checkpoint in {self.directory} failed to restore ({'; '.join(failures)}). Nothing was "
          "changed; to start afresh, run with --resume=false (the run dir's files are moved aside) or use "
          "another run_dir.")
    return None


def stale_steps(steps: list[int], written: int, keep: int) -> list[int]:
  """Checkpoints to remove after writing `written`: those past it (left by an abandoned continuation, e.g.
  a corrupt newer checkpoint that the run fell back from) and all but the `keep` newest up to it. The one
  just written is never among them."""
  upto = [s for s in steps if s <= written]
  return [s for s in steps if s > written] + upto[:max(len(upto) - keep, 0)]


class SaveOnSigterm:
  """Context manager: on SIGTERM, call `save_fn()` (a final checkpoint), then exit with status 143.

  A SIGTERM that arrives inside `deferred()` (a regular checkpoint being written) waits for the block to end,
  so the final save never writes into a directory that is being written; a second SIGTERM while the final
  save runs is ignored.
  """

  def __init__(self, save_fn: Callable[[], None]):
    self.save_fn = save_fn
    self._previous = None
    self._busy = 0
    self._pending = False

  def _stop(self, signum):
    self._busy += 1          # no nested stop from a second signal
    try:
      self.save_fn()
    finally:
      self._busy -= 1
    raise SystemExit(128 + signum)

  def __enter__(self):
    def handler(signum, frame):
      if self._busy:
        self._pending = True
        return
      self._stop(signum)

    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
      self._previous = None
    return self

  @contextlib.contextmanager
  def deferred(self):
    """A block a SIGTERM must not interrupt; a SIGTERM received meanwhile is handled when it ends."""
    self._busy += 1
    try:
      yield
    finally:
      self._busy -= 1
    if self._pending and not self._busy:
      self._pending = False
      self._stop(signal.SIGTERM)

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
