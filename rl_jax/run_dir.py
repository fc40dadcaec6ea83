"""A run directory holds one run: its settings (config.json), checkpoints and logs.

`open_run` is what a training loop calls first (under `checkpoint.RunLock`), before anything is written:

- resume=True continues the run in the directory; settings that decide training must equal the stored
  ones (a change raises `SettingsChanged`, naming each one), so a run never continues another run's
  checkpoint and its logs never mix two runs;
- resume=False starts a new run: whatever an earlier run left (`RUN_FILES`) moves to
  `previous_runs/<n>/` inside the directory first, so nothing of it is lost or mixed with the new one.

Either way the new settings are then written to config.json (atomically).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import warnings
from typing import Iterable, Optional

from rl_jax.distributed import is_main_process
from rl_jax.metrics_log import atomic_write_text

CONFIG = "config.json"
PREVIOUS = "previous_runs"
# What a run writes in its directory (other files there are left alone).
RUN_FILES = ("config.json", "checkpoints", "metrics.jsonl", "summary.json", "curves.png", "tb", "samples.jsonl",
             "rewards.jsonl", "eval_cache")


class SettingsChanged(ValueError):
  """A resumed run's training settings differ from those of the run its directory holds."""


def read_settings(run_dir) -> Optional[dict]:
  """The settings stored in <run_dir>/config.json, None when there is none."""
  path = pathlib.Path(run_dir) / CONFIG
  if not path.exists():
    return None
  try:
    settings = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not JSON ({e}); the run in {path.parent} cannot be checked. Start afresh with "
                     "--resume=false (its files are moved aside) or use another run_dir.") from e
  if not isinstance(settings, dict):
    raise ValueError(f"{path} holds {type(settings).__name__}, not a settings object.")
  return settings


def settings_changes(previous: Optional[dict], current: dict, may_change: Iterable[str]) -> dict:
  """{setting: (previous, now)} for every setting outside `may_change` whose value differs (a setting
  present on one side only counts as a change)."""
  if previous is None:
    return {}
  free = set(may_change)
  keys = sorted((set(previous) | set(current)) - free)
  return {k: (previous.get(k), current.get(k)) for k in keys if previous.get(k) != current.get(k)}


def holds_run(run_dir) -> bool:
  """Whether an earlier run left any of its files in `run_dir`."""
  return any((pathlib.Path(run_dir) / name).exists() for name in RUN_FILES)


def move_aside(run_dir) -> Optional[pathlib.Path]:
  """Moves the files of the run in `run_dir` (RUN_FILES) to run_dir/previous_runs/<n>/, n = 1, 2, ... the
  first free number (renames within the directory: no copy). Returns that folder, None when there was none."""
  run_dir = pathlib.Path(run_dir)
  present = [name for name in RUN_FILES if (run_dir / name).exists()]
  if not present:
    return None
  n = 1
  while (run_dir / PREVIOUS / str(n)).exists():
    n += 1
  dest = run_dir / PREVIOUS / str(n)
  dest.mkdir(parents=True)
  for name in present:
    (run_dir / name).rename(dest / name)
  return dest


def open_run(run_dir, settings: dict, *, resume: bool, may_change: Iterable[str] = ()) -> Optional[dict]:
  """Makes `run_dir` ready for a run with `settings` (a JSON-able dict) and writes them to config.json.

  resume=True: raises SettingsChanged when the stored run was trained with other settings (those in
  `may_change`, e.g. the run's length or logging, may differ); returns the stored settings (None if none).
  resume=False: moves an earlier run aside (see `move_aside`, warns where) and returns None.
  """
  run_dir = pathlib.Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  previous = None
  if resume:
    previous = read_settings(run_dir)
    changes = settings_changes(previous, settings, may_change)
    if changes:
      raise SettingsChanged(
          f"{run_dir} holds a run trained with other settings (theirs, ours): {changes}. Use another run_dir, "
          "or --resume=false to move that run aside (to previous_runs/) and start afresh.")
  elif is_main_process():      # on a pod the hosts share the directory: one of them moves the old run
    moved = move_aside(run_dir)
    if moved is not None:
      warnings.warn(f"resume=False: the earlier run in {run_dir} was moved to {moved}; this run starts afresh.")
  atomic_write_text(run_dir / CONFIG, json.dumps(settings, indent=2))
  return previous


def restart_logs(run_dir, names: Iterable[str]) -> None:
  """A run that restarts from step 0 in its own directory (no checkpoint survived) drops the rows its earlier
  attempt logged, so no step appears twice; warns when there were any."""
  run_dir = pathlib.Path(run_dir)
  dropped = [name for name in names if (run_dir / name).exists()]
  for name in dropped:
    if (run_dir / name).is_dir():
      shutil.rmtree(run_dir / name, ignore_errors=True)
    else:
      (run_dir / name).unlink(missing_ok=True)
  if dropped:
    warnings.warn(f"{run_dir}: no complete checkpoint, so the run restarts from step 0; the earlier attempt's "
                  f"{', '.join(dropped)} are started afresh.")
