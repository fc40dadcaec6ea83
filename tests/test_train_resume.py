"""Reliability of the training loop: resume == uninterrupted, corrupt checkpoints, strict config."""

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax.experiments import arithmetic_tiny as exp
from rl_jax.checkpoint import Checkpoints, abstract, saved_steps
from rl_jax.config import apply_overrides
from rl_jax.metrics_log import read_metrics
from rl_jax.train import init_state

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny(run_dir, **kw):
  base = dict(digits=1, d_model=32, sft_steps=3, sft_batch=16, rl_steps=4, prompts_per_step=4, group_size=4,
              minibatches=2, eval_every=2, eval_size=16, checkpoint_every=1, run_dir=str(run_dir), progress_bar=False)
  base.update(kw)
  return exp.Config(**base)


def rl_rows(run_dir):
  return [r for r in read_metrics(pathlib.Path(run_dir) / "metrics.jsonl") if r["phase"] == "rl"]


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path):
  exp.main(tiny(tmp_path / "full"))
  exp.main(tiny(tmp_path / "cut", rl_steps=2))            # "killed" after 2 RL steps
  exp.main(tiny(tmp_path / "cut", rl_steps=4))            # resumed from its checkpoint
  full, cut = rl_rows(tmp_path / "full"), rl_rows(tmp_path / "cut")
  assert [r["step"] for r in cut] == [1, 2, 3, 4]
  for a, b in zip(full, cut):
    for key in ("reward", "loss", "clip_frac", "entropy", "accuracy"):
      if key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)
  assert (tmp_path / "full" / "curves.png").stat().st_size > 0


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  opt = optax.adam(1e-3)
  s1 = init_state(params, opt, jax.random.PRNGKey(0))
  s2 = s1._replace(params={"w": s1.params["w"] + 1}, step=s1.step + 1)
  with Checkpoints(tmp_path) as ckpt:
    ckpt.save(1, s1)
    ckpt.save(2, s2)
  for f in (tmp_path / "2" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"garbage")
  with Checkpoints(tmp_path) as ckpt, pytest.warns(UserWarning, match=r"RL step 2 \(.*\) could not be restored"):
    restored = ckpt.restore_latest(abstract(s1))
  assert restored.position == 1 and int(restored.state.step) == 0
  np.testing.assert_array_equal(restored.state.params["w"], s1.params["w"])


def test_checkpoint_killed_mid_save_is_not_seen(tmp_path):
  params = {"w": jnp.ones(3)}
  s = init_state(params, optax.sgd(0.1), jax.random.PRNGKey(0))
  with Checkpoints(tmp_path) as ckpt:
    ckpt.save(1, s)
    ckpt.save(2, s)
  (tmp_path / "2").rename(tmp_path / "2.orbax-checkpoint-tmp")   # what a kill leaves: the unrenamed folder
  assert saved_steps(tmp_path) == [1]
  with Checkpoints(tmp_path) as ckpt:
    assert ckpt.restore_latest(abstract(s)).position == 1
    ckpt.save(2, s)                                              # the resumed run writes step 2 again
  assert saved_steps(tmp_path) == [1, 2]
  assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["1", "2"]   # tmp folder gone


def test_sigterm_writes_a_final_checkpoint(tmp_path):
  run_dir = tmp_path / "run"
  code = (
      "import sys; from rl_jax.experiments import arithmetic_tiny as e; "
      f"e.main(e.Config(digits=1, d_model=32, sft_steps=2, sft_batch=8, rl_steps=100000, prompts_per_step=2, "
      f"group_size=2, minibatches=1, eval_every=1000000, eval_size=4, checkpoint_every=1000000, "
      f"run_dir={str(run_dir)!r}, progress_bar=False))")
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    metrics = run_dir / "metrics.jsonl"
    for _ in range(600):  # wait until RL steps are being logged
      if metrics.exists() and sum(1 for r in read_metrics(metrics) if r["phase"] == "rl") >= 2:
        break
      if proc.poll() is not None:
        break
      import time
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out
  assert "SIGTERM: saved a final checkpoint" in out
  steps = saved_steps(run_dir / "checkpoints")
  assert steps and steps[-1] >= 2


def test_config_overrides_are_strict():
  cfg = apply_overrides(exp.Config(), ["--objective=dapo", "--lr=3e-4", "--dynamic_sampling=true"])
  assert (cfg.objective, cfg.lr, cfg.dynamic_sampling) == ("dapo", 3e-4, True)
  with pytest.raises(ValueError, match="Unknown config key 'learning_rate'"):
    apply_overrides(exp.Config(), ["--learning_rate=1"])
  with pytest.raises(ValueError, match="--lr expects float"):
    apply_overrides(exp.Config(), ["--lr=fast"])
  with pytest.raises(ValueError, match="Unknown objective 'grpoo'"):
    apply_overrides(exp.Config(), ["--objective=grpoo"])
  with pytest.raises(ValueError, match="divisible by minibatches"):
    apply_overrides(exp.Config(), ["--minibatches=3"])
  with pytest.raises(ValueError, match="--key=value"):
    apply_overrides(exp.Config(), ["objective=dapo"])


def test_help_lists_every_option_with_default_and_comment_and_runs_nothing(capsys):
  from rl_jax.config import from_command_line, usage
  cfg = exp.Config()
  text = usage(cfg, "Doc line.")
  assert text.startswith("Doc line.")
  option_lines = [line for line in text.splitlines() if line.startswith("  --")]
  assert len(option_lines) == len(dataclasses.fields(cfg))
  assert f"  --lr={cfg.lr}" in text and f"  --objective={cfg.objective}" in text
  with pytest.raises(SystemExit) as e:
    from_command_line(cfg, ["--lr=1e-3", "--help"], "Doc line.")
  assert e.value.code == 0 and capsys.readouterr().out.strip() == text.strip()
  assert from_command_line(cfg, ["--lr=1e-3"]) == apply_overrides(cfg, ["--lr=1e-3"])


@pytest.mark.parametrize("objective", ["dapo", "hapo", "gtpo", "clip_cov"])
def test_experiment_runs_two_steps_with_any_objective(objective, tmp_path):
  out = exp.main(tiny(tmp_path, objective=objective, rl_steps=2, checkpoint_every=0, sft_steps=1))
  assert len(out["history"]) == 2
  assert all(np.isfinite(r["loss"]) for r in out["history"])


def test_dynamic_sampling_refills_with_groups_that_carry_signal():
  from rl_jax.train import Rollouts, dynamic_sampling
  G, T = 2, 3

  def fake(attempt):
    rewards = np.array([[1, 1], [0, 1], [0, 0]], np.float32) if attempt % 2 == 0 else np.array(
        [[1, 0], [1, 1], [0, 0]], np.float32)
    ids = (attempt * 10 + np.arange(6))[:, None].repeat(T, 1)   # row identity survives the shuffle
    ro = Rollouts(ids, ids, ids, np.ones((6, T), np.float32), np.zeros((6, T)))
    return ro, rewards

  ro, rewards, stats = dynamic_sampling(fake, 2, G, max_batches=8)
  assert stats == {"gen_batches": 2, "short": 0}
  np.testing.assert_array_equal(rewards, [[0, 1], [1, 0]])
  np.testing.assert_array_equal(ro.tokens[:, 0], [2, 3, 10, 11])      # group 1 of batch 0, group 0 of batch 1
  ro, rewards, stats = dynamic_sampling(fake, 5, G, max_batches=2)    # only 2 informative groups exist
  assert stats["short"] == 3 and rewards.shape == (5, 2)
  assert ro.completion_mask[:4].sum() == 4 * T and ro.completion_mask[4:].sum() == 0


def test_experiment_with_dynamic_sampling(tmp_path):
  out = exp.main(tiny(tmp_path, objective="dapo", dynamic_sampling=True, rl_steps=2, checkpoint_every=0,
                      sft_steps=20))
  assert all(r["gen_batches"] >= 1 for r in out["history"])


def test_run_lock_keeps_a_second_process_out_and_takes_over_a_dead_owners_lock(tmp_path):
  import socket

  from rl_jax.checkpoint import RunDirBusy, RunLock
  host = socket.gethostname()
  lock = tmp_path / "run.lock"
  with RunLock(tmp_path):
    assert lock.read_text() == f"{host} {os.getpid()}"
    with pytest.raises(RunDirBusy, match="in use"):   # the holder is alive (this process)
      RunLock(tmp_path).__enter__()
    with RunLock(tmp_path, process=1):                 # another worker of a multi-host job: its own file
      assert (tmp_path / "run.1.lock").exists()
    assert not (tmp_path / "run.1.lock").exists()
  assert not lock.exists()
  with pytest.raises(KeyError):                        # released when the run raises, too
    with RunLock(tmp_path):
      raise KeyError("crash")
  assert not lock.exists()

  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock.write_text(f"{host} {dead.pid}")                # left by a process killed with SIGKILL
  with pytest.warns(UserWarning, match="no longer running"):
    with RunLock(tmp_path):
      assert lock.read_text() == f"{host} {os.getpid()}"
  lock.write_text(f"some-other-host-{host} 1")         # cannot be checked from here
  with pytest.raises(RunDirBusy, match="delete"):
    RunLock(tmp_path).__enter__()
  assert lock.read_text() == f"some-other-host-{host} 1"


def test_experiment_refuses_a_run_dir_another_live_process_uses(tmp_path):
  import socket

  from rl_jax.checkpoint import RunDirBusy
  (tmp_path / "run.lock").write_text(f"{socket.gethostname()} {os.getppid()}")   # the parent process: alive
  with pytest.raises(RunDirBusy, match=f"pid {os.getppid()}"):
    exp.main(tiny(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]             # nothing written
