"""Run logging: JSON lines always, TensorBoard when installed, and a PNG plot of the curves."""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
import warnings
from typing import Callable, Optional, Sequence


class MetricsLogger:
  """Appends one JSON object per step to <run_dir>/metrics.jsonl and, with tensorboardX installed
  (`pip install rl-jax[tensorboard]`), the finite scalars to TensorBoard event files in <run_dir>/tb.

  Only process 0 writes (`rl_jax.distributed.is_main_process`): on a pod every host computes the same
  global metrics, so the other processes' loggers are no-ops and the run dir gets one copy.
  """

  def __init__(self, run_dir, *, tensorboard: bool = True, enabled: Optional[bool] = None,
               purge_step: Optional[int] = None):
    from rl_jax.distributed import is_main_process
    self.run_dir = pathlib.Path(run_dir)
    self.path = self.run_dir / "metrics.jsonl"
    self.enabled = is_main_process() if enabled is None else bool(enabled)
    if self.enabled and self.path.exists() and not self.path.read_bytes().endswith(b"\n") and self.path.stat().st_size:
      rewrite_rows(self.path, lambda r: True)   # a half-written last line: drop it, so appends stay rows
    self._tb = None
    self.run_dir.mkdir(parents=True, exist_ok=True)
    if not self.enabled:
      return
    if tensorboard:
      try:
        import tensorboardX
      except ImportError:
        pass
      else:
        # purge_step: a resumed run logs again from this step; TensorBoard hides the earlier events from it on
        # the suffix keeps two writers opened within one second (a quick resume) from sharing, and so
        # truncating, one event file: tensorboardX names files by the second and the host only
        self._tb = tensorboardX.SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step,
                                              filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def log(self, step: int, metrics: dict, *, phase: str = "rl") -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "phase": phase}
    row.update({k: (float(v) if isinstance(v, (int, float)) or hasattr(v, "__float__") else v)
                for k, v in metrics.items()})
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(f"{phase}/{k}", v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path) -> list[dict]:
  """The rows of a JSON-lines log ([] for a missing file). A last line that does not parse (a process killed
  while writing it) is dropped with a warning; a bad line before it is corruption and raises, naming it."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  rows = []
  for k, (i, line) in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if k + 1 < len(lines):
        raise ValueError(f"{path}, line {i}: not JSON ({e}); only a half-written last line is tolerated.") from e
      warnings.warn(f"{path}: dropping its half-written last line {i} ({len(line)} characters; the writer was "
                    "stopped mid-line).")
  return rows


def rewrite_rows(path, keep: Callable[[dict], bool]) -> list[dict]:
  """Rewrites a JSON-lines log with the rows `keep` accepts (a half-written last line goes too), atomically:
  the new file replaces the old one in one rename, so a kill meanwhile leaves one or the other whole."""
  path = pathlib.Path(path)
  rows = [r for r in read_metrics(path) if keep(r)]
  atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
  return rows


def atomic_write_text(path, text: str) -> None:
  """Writes `text` to a temporary file next to `path`, flushes it to disk, then renames it over `path`."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with tmp.open("w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def plot_curves(rows: Sequence[dict], out_path, *, keys: Sequence[str] = ("reward", "accuracy"),
                title: Optional[str] = None) -> pathlib.Path:
  """Plots each key against step (one panel per key) and writes a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k in keys if any(k in r for r in rows)]
  fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(5 * max(len(keys), 1), 3.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = sorted((r["step"], r[key]) for r in rows if key in r)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path
