"""Checkpoints of a training run through orbax's `CheckpointManager`: one folder per saved RL step,
`<directory>/<step>/`, holding composite items

  state       the TrainState: params, optimizer state, update counter, RNG key         (StandardSave)
  ref_params  the reference policy's parameters, in runs with β > 0                     (StandardSave)
  estimator   a stateful advantage estimator's per-question state (DCPO's statistics)   (StandardSave)
  replay      host-side data the run replays (ARPO's success buffer), JSON data         (JsonSave)
  meta        {"format": 2, "position": RL step = data position, "items": [...]}        (JsonSave)

Saves are asynchronous: `save` returns once the arrays are copied to host memory and a background thread
writes them; the next `save`, `wait` and `close` wait for that write. A step folder gets its final name only
when it is complete (orbax writes a temporary folder and renames it; on GCS a commit file marks it), so a
kill mid-save leaves nothing that is read later, and the temporary folder is removed at the next start.
Retention (the `keep` newest, plus every step divisible by `keep_every`) and deletion are the manager's: on
several processes its primary process deletes, between barriers of all of them.

`directory` goes through orbax's path layer (etils.epath): a local path or `gs://bucket/...` (no `os.path`).

A checkpoint is chosen only once every item in it restored (with the caller's abstract templates, shardings
included, so arrays come back laid out on the run's mesh): a corrupt newest one is skipped with a warning
naming it and the previous one is used; when every checkpoint fails, `restore_latest` raises
`CorruptCheckpoints`. The files are data, never code: tensorstore arrays and JSON, checked before use.
`step_<n>/` folders are rl_jax's earlier layout (format 1: orbax StandardCheckpointer items and a COMPLETE
marker); they are refused with `OldCheckpointLayout`, not read.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import signal
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

FORMAT = 2
ITEMS = ("state", "ref_params", "estimator", "replay")
JSON_ITEMS = ("replay",)   # saved as JSON (no array template: restored as written, checked by its reader)
_OLD_STEP_DIR = re.compile(r"^step_\d+$")


class CorruptCheckpoints(RuntimeError):
  """Checkpoints exist, and none of them restores."""


class OldCheckpointLayout(ValueError):
  """The directory holds checkpoints in rl_jax's earlier layout (format 1)."""


class Restored(NamedTuple):
  position: int            # the RL step saved, which is also the data position
  state: Any
  ref_params: Any = None
  estimator: Any = None
  replay: Any = None       # the JSON data saved as `replay` (untrusted: its reader checks it)


def _absolute(directory) -> epath.Path:
  """`directory` as an absolute path (orbax refuses relative ones); remote paths (gs://...) unchanged."""
  if "://" in str(directory):
    return epath.Path(directory)
  return epath.Path(pathlib.Path(directory).absolute())


def check_layout(directory) -> None:
  """Raises OldCheckpointLayout when `directory` holds format-1 checkpoints (`step_<n>/` folders)."""
  directory = epath.Path(directory)
  old = sorted(p.name for p in directory.iterdir() if _OLD_STEP_DIR.match(p.name)) if directory.exists() else []
  if old:
    raise OldCheckpointLayout(
        f"{directory} holds checkpoints in rl_jax's checkpoint format 1 ({', '.join(old)}: step_<n>/ folders with a "
        f"COMPLETE marker); this rl_jax reads and writes only format {FORMAT} (orbax CheckpointManager, <step>/ "
        "folders). Finish that run with the rl_jax release that wrote it, or start afresh with --resume=false "
        "(the run dir's checkpoints and logs move to previous_runs/).")


def saved_steps(directory) -> list[int]:
  """The complete checkpoints' steps in `directory`, read without a manager (nothing is created)."""
  directory = epath.Path(directory)
  if not directory.exists():
    return []
  return sorted(m.step for m in ocp.path.step.standard_name_format().find_all(directory))


def abstract(tree, shardings=None):
  """The restore template of `tree` (arrays or ShapeDtypeStructs): jax.ShapeDtypeStruct leaves with
  `shardings` (a matching tree of jax.sharding.Sharding), or each leaf's own sharding when None."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (one all-gather on several; `ok` itself on one)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def check_meta(meta, step: int, wanted: list[str]) -> None:
  """Raises ValueError unless `meta` (read from the checkpoint: untrusted) is this format's record of `step`
  holding every item in `wanted`."""
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    raise ValueError(f"meta: expected checkpoint format {FORMAT}, found {found!r}")
  position, items = meta.get("position"), meta.get("items")
  if type(position) is not int or position != step:
    raise ValueError(f"meta: position {position!r} is not the step folder's {step}")
  if not isinstance(items, list) or not all(isinstance(i, str) and i in ITEMS for i in items):
    raise ValueError(f"meta: items {items!r} are not a list of {ITEMS}")
  missing = sorted(set(wanted) - set(items))
  if missing:
    raise ValueError(f"the checkpoint holds no {missing}")


class Checkpoints:
  """The run's checkpoints: an `ocp.CheckpointManager` on `directory` with asynchronous saves, the `keep`
  newest kept (and every step divisible by `keep_every` > 0). `saved` is the step this object last saved or
  restored (None before), so a final save can be skipped when it would repeat it. Use as a context manager,
  or `close()`: both wait for a save still being written."""

  def __init__(self, directory, *, keep: int = 3, keep_every: int = 0, async_save: bool = True):
    if keep < 1:
      raise ValueError(f"keep must be >= 1 (the checkpoint just written is always kept), got {keep}.")
    if keep_every < 0:
      raise ValueError(f"keep_every must be >= 0 (0: none kept beyond the newest), got {keep_every}.")
    self.directory = _absolute(directory)
    check_layout(self.directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every or None,
                                           enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self.saved: Optional[int] = None

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc):
    self.close()
    return False

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, position: int, state, ref_params=None, estimator=None, replay=None) -> None:
    """Starts writing checkpoint `position` (returns once the arrays are on the host). Checkpoints numbered
    from `position` on go first: left by an abandoned continuation, e.g. a corrupt newer checkpoint the run
    fell back from (the manager deletes them on its primary process)."""
    for step in self.steps():
      if step >= position:
        self._manager.delete(step)
    items = {k: v for k, v in zip(ITEMS, (state, ref_params, estimator, replay)) if v is not None}
    meta = {"format": FORMAT, "position": position, "items": sorted(items)}
    args = ocp.args.Composite(meta=ocp.args.JsonSave(meta), **{
        k: (ocp.args.JsonSave if k in JSON_ITEMS else ocp.args.StandardSave)(v) for k, v in items.items()})
    self._manager.save(position, args=args, force=True)
    self.saved = position

  def wait(self) -> None:
    """Blocks until the save being written (if any) is complete, raising its error if it failed."""
    self._manager.wait_until_finished()
    self._manager.check_for_errors()

  def close(self) -> None:
    self._manager.close()

  def reached_preemption(self, step: int) -> bool:
    """Whether every process reached the preemption sync point at `step` (a multi-host run told to stop,
    e.g. a TPU maintenance event: all save at this step). False without jax.distributed's preemption service."""
    return self._manager.reached_preemption(step)

  def restore(self, step: int, state, ref_params=None, estimator=None, replay: bool = False) -> Restored:
    """Checkpoint `step` restored with abstract templates (see `abstract`; None: the item is not read) and, with
    `replay`, its replay data; raises on the first item that fails, and when the checkpoint lacks a requested
    item."""
    templates = {k: v for k, v in zip(ITEMS, (state, ref_params, estimator, replay or None)) if v is not None}
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_meta(meta, step, sorted(templates))
    out = self._manager.restore(step, args=ocp.args.Composite(**{
        k: ocp.args.JsonRestore() if k in JSON_ITEMS else ocp.args.StandardRestore(v) for k, v in templates.items()}))
    return Restored(step, *(out[k] if k in templates else None for k in ITEMS))

  def restore_latest(self, state, ref_params=None, estimator=None, replay: bool = False) -> Optional[Restored]:
    """The newest checkpoint all of whose requested items restore on every process; older ones are tried after
    a failure (a warning names it). None when there is no checkpoint; CorruptCheckpoints when none restores."""
    failures = []
    for step in reversed(self.steps()):
      try:
        restored, error = self.restore(step, state, ref_params, estimator, replay), None
      except Exception as e:  # corrupt or truncated files, a missing item
        restored, error = None, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
      if all_processes(error is None):
        self.saved = step
        return restored
      error = error or "failed on another process"
      failures.append(f"step {step}: {error}")
      warnings.warn(f"checkpoint at RL step {step} ({self.directory / str(step)}) could not be restored ({error}); "
                    "falling back to the previous one.")
    if failures:
      raise CorruptCheckpoints(
          f"every checkpoint in {self.directory} failed to restore ({'; '.join(failures)}). Nothing was changed; to "
          "start afresh, run with --resume=false (the run dir's files are moved aside) or use another run_dir.")
    return None


def donated(tree) -> bool:
  """Whether any array of `tree` was donated to a jitted call (its buffers deleted: it can be read no more)."""
  return any(isinstance(x, jax.Array) and x.is_deleted() for x in jax.tree.leaves(tree))


class SaveOnSigterm:
  """Context manager: on SIGTERM, call `save_fn()` (a final checkpoint), then exit with status 143.

  A SIGTERM that arrives inside `deferred()` (a regular checkpoint being started) waits for the block to end,
  so the final save never interleaves with it; a second SIGTERM while the final save runs is ignored.
  With `install=False` no handler is installed (`deferred` blocks then change nothing): on several processes
  jax.distributed's preemption service receives SIGTERM instead, and the run saves at the step
  `Checkpoints.reached_preemption` names, on every process together. `ready()` false (what `save_fn` would
  save is gone, e.g. a train state donated to the step in progress) makes a SIGTERM wait as inside `deferred()`,
  until the next `deferred()` block ends.
  """

  def __init__(self, save_fn: Callable[[], None], *, install: bool = True, ready: Callable[[], bool] = lambda: True):
    self.save_fn = save_fn
    self.install = install
    self.ready = ready
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
      if self._busy or not self.ready():
        self._pending = True
        return
      self._stop(signum)

    self._previous = None
    if self.install:
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
