"""Kill/corrupt campaign on the arithmetic experiment (slow: minutes). A run is killed (SIGKILL, sometimes
SIGTERM) at random moments, its run dir damaged between attempts the ways a crash or a bad disk would
(half-written last log line, a corrupt or unfinished newest checkpoint, every checkpoint corrupt), and
resumed until it finishes; its metrics must then equal an uninterrupted run's, each step once.

  .venv/bin/python -m pytest -m slow tests/test_run_dir_campaign.py

RL_JAX_CAMPAIGN_KILLS=N sets how many kills the campaign needs before it stops (default 15; fewer is quicker).
"""

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

from rl_jax.metrics_log import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = ["--digits=1", "--d_model=32", "--sft_steps=20", "--sft_batch=16", "--rl_steps=12", "--prompts_per_step=4",
            "--group_size=4", "--minibatches=2", "--eval_every=3", "--eval_size=16", "--checkpoint_every=2",
            "--beta=0.01", "--progress_bar=false"]
KEYS = ("reward", "loss", "clip_frac", "entropy", "accuracy")
KILLS = int(os.environ.get("RL_JAX_CAMPAIGN_KILLS", "15"))


def start(run_dir, cache, *extra):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.Popen([sys.executable, "-m", "rl_jax.experiments.arithmetic_tiny", *SETTINGS, f"--run_dir={run_dir}",
                           *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def checkpoint_dirs(run_dir):
  """The complete checkpoints' folders (orbax CheckpointManager layout: checkpoints/<step>/), oldest first."""
  found = (pathlib.Path(run_dir) / "checkpoints").glob("*")
  return sorted((p for p in found if p.name.isdigit()), key=lambda p: int(p.name))


def truncate_largest_file(folder):
  files = [f for f in pathlib.Path(folder).rglob("*") if f.is_file()]
  if files:
    big = max(files, key=lambda f: f.stat().st_size)
    data = big.read_bytes()
    big.write_bytes(data[:len(data) // 2])


def damage(run_dir, how):
  """One kind of damage a crash or a bad disk leaves in a run dir; returns what was done."""
  run_dir = pathlib.Path(run_dir)
  ckpts = checkpoint_dirs(run_dir)
  metrics = run_dir / "metrics.jsonl"
  if how == "half_line" and metrics.exists():
    with metrics.open("a") as f:
      f.write('{"step": 99, "phase": "rl", "rew')
    return how
  if how in ("corrupt_state", "corrupt_ref") and ckpts:
    truncate_largest_file(ckpts[-1] / ("state" if how == "corrupt_state" else "ref_params"))
    return f"{how} {ckpts[-1].name}"
  if how == "incomplete" and ckpts:             # a kill mid-save leaves the folder under its temporary name
    ckpts[-1].rename(ckpts[-1].with_name(ckpts[-1].name + ".orbax-checkpoint-tmp"))
    return f"{how} {ckpts[-1].name}"
  return None


def same_rows(a, b):
  assert [(r["step"], r["phase"]) for r in a] == [(r["step"], r["phase"]) for r in b]
  for x, y in zip(a, b):
    for key in KEYS:
      assert (key in x) == (key in y), (x["step"], key)
      if key in x:
        assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)


def resume_until_finished(run_dir, cache, rng, duration, log):
  """Starts the run again and again, killing it at a random moment and sometimes damaging the run dir, until
  an attempt finishes by itself; returns the number of kills."""
  kills = 0
  for attempt in range(40):
    proc = start(run_dir, cache)
    time.sleep(rng.uniform(0.2, 1.0) * duration)
    if proc.poll() is not None:
      code, out = finish(proc)
      assert code == 0, "\n".join(log) + "\n" + out
      log.append(f"{run_dir.name} attempt {attempt}: finished")
      return kills
    sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
    proc.send_signal(sig)
    code, out = finish(proc)
    assert code in (0, -signal.SIGKILL, 128 + signal.SIGTERM, -signal.SIGTERM), out
    kills += 1
    log.append(f"{run_dir.name} attempt {attempt}: {sig.name} -> exit {code}")
    # damage the newest checkpoint only while an older one is left (all corrupt is its own case below)
    if rng.random() < 0.5 and len(checkpoint_dirs(run_dir)) >= 2:
      log.append(f"  damage: {damage(run_dir, rng.choice(['half_line', 'corrupt_state', 'corrupt_ref', 'incomplete']))}")
    elif rng.random() < 0.3:
      log.append(f"  damage: {damage(run_dir, 'half_line')}")
  pytest.fail("the run never finished:\n" + "\n".join(log))


@pytest.mark.slow
def test_kill_and_corrupt_campaign_ends_with_the_uninterrupted_metrics(tmp_path):
  cache = tmp_path / "xla_cache"
  code, out = finish(start(tmp_path / "reference", cache))      # compiles (and fills the cache)
  assert code == 0, out
  reference = read_metrics(tmp_path / "reference" / "metrics.jsonl")
  t0 = time.perf_counter()
  code, out = finish(start(tmp_path / "again", cache))          # as long as an attempt takes
  assert code == 0, out
  duration = time.perf_counter() - t0
  same_rows(read_metrics(tmp_path / "again" / "metrics.jsonl"), reference)

  rng, log, kills, rounds = random.Random(0), [], 0, 0
  while kills < KILLS:
    run_dir = tmp_path / f"campaign_{rounds}"
    kills += resume_until_finished(run_dir, cache, rng, duration, log)
    rounds += 1
    same_rows(read_metrics(run_dir / "metrics.jsonl"), reference)   # each step once, the uninterrupted values
    assert not (run_dir / "run.lock").exists()
  print("\n".join(log))

  # every checkpoint corrupt: the resume stops with an error and changes nothing; --resume=false moves the
  # run aside and starts afresh
  for ckpt in checkpoint_dirs(run_dir):
    truncate_largest_file(ckpt / "state")
  before = (run_dir / "metrics.jsonl").read_text()
  code, out = finish(start(run_dir, cache))
  assert code != 0 and "CorruptCheckpoints" in out and "--resume=false" in out, out
  assert (run_dir / "metrics.jsonl").read_text() == before
  code, out = finish(start(run_dir, cache, "--resume=false"))
  assert code == 0, out
  same_rows(read_metrics(run_dir / "metrics.jsonl"), reference)
  assert (run_dir / "previous_runs" / "1" / "metrics.jsonl").read_text() == before
