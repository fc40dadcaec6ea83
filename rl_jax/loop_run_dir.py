"""The run directory of an RL run (`rl_jax.loop`): `RunDir` holds the lock (one live process), the settings
guard (a resumed run must train as the stored one), config.json, fresh-run cleanup of the logs, the
checkpoints (orbax, possibly on gs://) and the metrics logger; `restore` reads the newest whole checkpoint
straight into the run's shardings.

Multi-host: the run dir's files are written by process 0 only (each process holds its own lock file);
checkpoints are written by every process through the CheckpointManager, whose primary process alone deletes
old ones.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Optional

import jax
import numpy as np

import rl_jax
from rl_jax.advantages.stateful import init_reward_stats
from rl_jax.checkpoint import Checkpoints, RunLock, abstract, check_layout, saved_steps
from rl_jax.config import to_dict
from rl_jax.distributed import is_main_process
from rl_jax.loop_config import RESUMABLE, STATEFUL_ADVANTAGES, RLConfig
from rl_jax.loop_run import Run
from rl_jax.metrics_log import MetricsLogger, rewrite_rows
from rl_jax.run_dir import open_run, restart_logs
from rl_jax.train import init_state

LOGS = ("metrics.jsonl", "rewards.jsonl", "samples.jsonl")


class RunDir:
  """Context manager: a run directory held by this process (RunLock) for the length of a run.

  On entry: takes the lock before anything is written; refuses checkpoints of rl_jax's earlier format and
  a checkpoint past cfg.rl_steps; then `rl_jax.run_dir.open_run`: a resumed run must not change any setting
  outside `resumable` (SettingsChanged, nothing written), resume=false moves an earlier run aside; config.json
  holds the settings (cfg, plus `extra_settings` such as a custom objective's name). Then `ckpt` (a
  `Checkpoints` on `checkpoint_dir(cfg)`) opens; `restore` chooses the checkpoint (or restarts the logs of a
  run with none) and opens `logger` (metrics.jsonl, process 0). On exit the save still being written finishes.

  The run dir's own files (lock, config.json, logs) are local files; only the checkpoints may live elsewhere
  (`--checkpoint_dir`, e.g. gs://...).
  """

  def __init__(self, cfg: RLConfig, *, resumable=RESUMABLE, extra_settings: Optional[dict] = None):
    self.cfg, self.resumable = cfg, frozenset(resumable)
    self.settings = dict(to_dict(cfg), **(extra_settings or {}))
    self.path = pathlib.Path(cfg.run_dir)
    self.primary = is_main_process()
    self.logger = None
    self.ckpt: Optional[Checkpoints] = None
    self.estimator = None       # the restored estimator state (stateful advantages)
    self.replay = None          # the restored replay record (ARPO's buffer, rl_jax.loop_extras.replay_record)
    self._lock = RunLock(cfg.run_dir, process=jax.process_index())

  def __enter__(self) -> "RunDir":
    self._lock.__enter__()
    try:
      self._open()
    except BaseException:
      self._lock.__exit__(None, None, None)
      raise
    return self

  def __exit__(self, *exc):
    try:
      if self.logger is not None:
        self.logger.close()
      if self.ckpt is not None:
        self.ckpt.close()        # waits for the save being written
    finally:
      self._lock.__exit__(*exc)
    return False

  def _open(self):
    cfg = self.cfg
    directory = checkpoint_dir(cfg)
    if cfg.resume:
      check_layout(directory)
      steps = saved_steps(directory)
      if steps and steps[-1] > cfg.rl_steps:
        raise ValueError(f"{directory} has a checkpoint at RL step {steps[-1]}, past rl_steps={cfg.rl_steps}.")
    elif cfg.checkpoint_dir and directory.exists() and any(directory.iterdir()):
      raise ValueError(f"resume=false: --checkpoint_dir={cfg.checkpoint_dir} is not empty (an earlier run's "
                       "checkpoints?); only the run dir's own files are moved aside. Empty it or choose another one.")
    self.previous = open_run(self.path, self.settings, resume=cfg.resume, may_change=self.resumable)
    if not is_shared_storage(directory) and jax.process_count() > 1:
      warnings.warn(f"{jax.process_count()} processes write their shards of each checkpoint into {directory}, a "
                    "local path: it must be a file system every host shares; else use --checkpoint_dir=gs://...")
    if jax.process_count() > 1:   # every process sees the earlier run moved aside before opening the checkpoints
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("rl_jax RunDir.open")
    self.ckpt = Checkpoints(directory, keep=cfg.checkpoint_keep, keep_every=cfg.checkpoint_keep_every)
    print(f"rl_jax {rl_jax.__version__} | {jax.devices()[0].device_kind} x{jax.device_count()} | "
          f"config: {json.dumps(to_dict(cfg))}")

  def restore(self, run: "Run", params, rng):
    """(state, reference params, position) from the newest checkpoint all of whose items restore, read straight
    into the run's shardings, or None: a fresh run (also when cfg.resume is false), whose logs start afresh.
    A stateful estimator's restored state is left in `self.estimator`, the replay record in `self.replay`."""
    restored = None
    if self.cfg.resume:
      state = abstract(jax.eval_shape(lambda: init_state(params, run.optimizer, rng)), run.state_sharding)
      ref = abstract(jax.eval_shape(lambda: params), run.param_sharding) if self.cfg.beta > 0 else None
      restored = self.ckpt.restore_latest(state, ref, estimator_template(run), replay=bool(self.cfg.replay))
    if restored is None:
      restart_logs(self.path, (*LOGS, "tb"))
      self.logger = MetricsLogger(self.path)
      return None
    self.logger = MetricsLogger(self.path, purge_step=restored.position + 1)
    self.estimator, self.replay = restored.estimator, restored.replay
    print(f"resumed from {self.ckpt.directory / str(restored.position)} at RL step {restored.position}")
    return restored.state, restored.ref_params, restored.position

  def trim(self, position: int, *, drop_initial_eval: bool = False) -> None:
    """Logs cut back to `position` for a resumed run: RL rows after it go (they are made again), so do
    evaluation rows after step 0 (and the step-0 ones with `drop_initial_eval`)."""
    if self.primary:
      for name in LOGS:
        if (self.path / name).exists():
          rewrite_rows(self.path / name, lambda r: r["step"] <= position
                       and not (r.get("phase") == "eval" and (r["step"] > 0 or drop_initial_eval)))

  def append(self, name: str, row: dict) -> None:
    if self.primary:
      with open(self.path / name, "a") as f:
        f.write(json.dumps(row) + "\n")


def is_shared_storage(directory) -> bool:
  """Whether `directory` names object storage every host reaches (gs://, s3://, ...) rather than a local path."""
  return "://" in str(directory)


def checkpoint_dir(cfg: RLConfig):
  """Where the run's checkpoints go: --checkpoint_dir (a local path or gs://...), else <run_dir>/checkpoints."""
  from etils import epath
  return epath.Path(cfg.checkpoint_dir or pathlib.Path(cfg.run_dir) / "checkpoints")

def estimator_template(run: Run):
  """The restore template of the stateful estimator's state (host arrays), None for stateless estimators."""
  if run.advantage not in STATEFUL_ADVANTAGES:
    return None
  return jax.tree.map(np.asarray, jax.device_get(init_reward_stats(run.task.num_questions)))
