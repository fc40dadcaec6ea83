"""Run directories never lose or mix data: retention, fresh runs in used dirs, restarts, half-written logs,
SIGTERM at awkward moments, partly corrupt checkpoints, changed settings (library pieces and the arithmetic
experiment end to end)."""

import json
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax.experiments import arithmetic_tiny as exp
from rl_jax import checkpoint as ckpt_lib
from rl_jax.checkpoint import Checkpoints, CorruptCheckpoints, SaveOnSigterm, abstract, saved_steps
from rl_jax.metrics_log import MetricsLogger, read_metrics, rewrite_rows
from rl_jax.run_dir import SettingsChanged, move_aside, open_run, settings_changes
from rl_jax.train import init_state

KEYS = ("reward", "loss", "clip_frac", "entropy", "accuracy")


def tiny(run_dir, **kw):
  base = dict(digits=1, d_model=32, sft_steps=3, sft_batch=16, rl_steps=4, prompts_per_step=4, group_size=4,
              minibatches=2, eval_every=2, eval_size=16, checkpoint_every=1, run_dir=str(run_dir), progress_bar=False)
  base.update(kw)
  return exp.Config(**base)


def rows(run_dir):
  return read_metrics(pathlib.Path(run_dir) / "metrics.jsonl")


def assert_same_rows(a, b):
  """Same (step, phase) sequence, each step once, and the same metric values."""
  assert [(r["step"], r["phase"]) for r in a] == [(r["step"], r["phase"]) for r in b]
  for x, y in zip(a, b):
    for key in KEYS:
      assert (key in x) == (key in y), (x["step"], key)
      if key in x:
        assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
  """Every tiny run here compiles the same functions: a persistent compilation cache (this module only) makes
  the repeats load them instead of compiling again, the same executables, so the same numbers."""
  from jax.experimental.compilation_cache import compilation_cache
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(tmp_path_factory.mktemp("xla_cache")), 0.0, 0)):
    jax.config.update(n, v)
  compilation_cache.reset_cache()
  yield
  for n, v in before.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """The uninterrupted tiny run every interrupted one must reproduce."""
  d = tmp_path_factory.mktemp("full")
  exp.main(tiny(d))
  return rows(d)


def small_states():
  params = {"w": jnp.arange(600.0).reshape(20, 30)}
  s1 = init_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))
  s2 = s1._replace(params={"w": s1.params["w"] + 1}, step=s1.step + 1)
  return s1, s2


def truncate_largest_file(folder):
  files = [f for f in pathlib.Path(folder).rglob("*") if f.is_file()]
  big = max(files, key=lambda f: f.stat().st_size)
  data = big.read_bytes()
  big.write_bytes(data[:len(data) // 2])


# ---- library pieces ----

def test_retention_never_removes_the_checkpoint_just_written(tmp_path):
  s1, _ = small_states()
  with Checkpoints(tmp_path, keep=2) as old:
    for step in (10, 20, 30):                   # left by a longer run
      old.save(step, s1)
  assert saved_steps(tmp_path) == [20, 30]
  with Checkpoints(tmp_path, keep=2) as new:
    new.save(1, s1)
    assert new.steps() == [1]                   # the higher, stale ones go; the one just written stays
    new.save(2, s1)
    new.save(3, s1)
  assert saved_steps(tmp_path) == [2, 3]
  with Checkpoints(tmp_path / "every", keep=1, keep_every=2) as ckpt:
    for step in range(1, 6):
      ckpt.save(step, s1)
  assert saved_steps(tmp_path / "every") == [2, 4, 5]   # the newest, and each multiple of keep_every
  with pytest.raises(ValueError, match="keep must be >= 1"):
    Checkpoints(tmp_path, keep=0)


def corrupt_meta(path):
  (path / "metadata").write_text(json.dumps({"format": 2, "position": 1, "items": ["state", "ref_params", "estimator"]}))


def test_a_damaged_item_of_the_latest_checkpoint_falls_back_to_the_previous(tmp_path):
  s1, s2 = small_states()
  counts = {"count": np.arange(1000), "mean": np.ones(1000, np.float32)}
  for item in ("state", "ref_params", "estimator", "meta"):
    d = tmp_path / item
    with Checkpoints(d) as ckpt:
      ckpt.save(1, s1, s1.params, counts)
      ckpt.save(2, s2, s2.params, {k: v + 1 for k, v in counts.items()})
    if item == "meta":                          # the JSON record names another step
      corrupt_meta(d / "2" / "meta")
    else:
      truncate_largest_file(d / "2" / item)
    with Checkpoints(d) as ckpt, pytest.warns(UserWarning, match="RL step 2 .*could not be restored"):
      restored = ckpt.restore_latest(abstract(s1), abstract(s1.params), counts)
    assert restored.position == 1, item
    np.testing.assert_array_equal(restored.state.params["w"], s1.params["w"])
    np.testing.assert_array_equal(restored.ref_params["w"], s1.params["w"])
    np.testing.assert_array_equal(restored.estimator["count"], counts["count"])


def test_every_checkpoint_corrupt_raises_and_only_unfinished_ones_restart(tmp_path):
  s1, s2 = small_states()
  with Checkpoints(tmp_path / "corrupt") as ckpt:
    ckpt.save(1, s1)
    ckpt.save(2, s2)
  for step in (1, 2):
    truncate_largest_file(tmp_path / "corrupt" / str(step) / "state")
  with Checkpoints(tmp_path / "corrupt") as ckpt:
    with pytest.warns(UserWarning), pytest.raises(CorruptCheckpoints, match="every checkpoint in .*--resume=false"):
      ckpt.restore_latest(abstract(s1))
    assert ckpt.steps() == [1, 2]               # nothing removed
    with pytest.warns(UserWarning), pytest.raises(CorruptCheckpoints, match="holds no .'ref_params'"):
      ckpt.restore_latest(abstract(s1), abstract(s1.params))    # an item the run needs is missing
  (tmp_path / "unfinished" / "1.orbax-checkpoint-tmp").mkdir(parents=True)
  with Checkpoints(tmp_path / "unfinished") as ckpt:
    assert ckpt.restore_latest(abstract(s1)) is None


def test_half_written_last_line_is_dropped_with_a_warning_and_a_bad_middle_line_raises(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "phase": "rl"}\n{"step": 2, "phase": "rl"}\n{"step": 3, "ph')
  with pytest.warns(UserWarning, match="half-written last line 3"):
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
  with pytest.warns(UserWarning, match="half-written"):
    logger = MetricsLogger(tmp_path, tensorboard=False)   # repairs the file, so its appends stay whole rows
  logger.log(3, {"reward": 0.5})
  assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
  rewrite_rows(path, lambda r: r["step"] != 2)
  assert [r["step"] for r in read_metrics(path)] == [1, 3]
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]   # no temporary file left
  path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
  with pytest.raises(ValueError, match="line 2: not JSON"):
    read_metrics(path)


def test_sigterm_inside_deferred_waits_for_the_block_and_saves_once():
  calls = []
  with pytest.raises(SystemExit) as e:
    with SaveOnSigterm(lambda: calls.append("save")) as sigterm:
      with sigterm.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)    # a second one changes nothing
        calls.append("block finished")
  assert e.value.code == 128 + signal.SIGTERM
  assert calls == ["block finished", "save"]
  before = signal.getsignal(signal.SIGTERM)
  with SaveOnSigterm(lambda: calls.append("save"), install=False) as sigterm:   # multi-process: jax's service
    assert signal.getsignal(signal.SIGTERM) is before                          # keeps the signal
    with sigterm.deferred():
      pass
  assert calls == ["block finished", "save"]


def test_sigterm_while_the_state_is_donated_waits_for_the_next_deferred_block():
  state = {"x": jnp.arange(4.0)}
  jax.jit(lambda s: s, donate_argnums=0)(state)             # its buffers now belong to the call's output
  assert ckpt_lib.donated(state) and not ckpt_lib.donated({"x": jnp.ones(2), "n": 3})
  calls, live = [], {"state": state}
  with pytest.raises(SystemExit) as e:
    with SaveOnSigterm(lambda: calls.append("save"), ready=lambda: not ckpt_lib.donated(live["state"])) as sigterm:
      os.kill(os.getpid(), signal.SIGTERM)
      calls.append("went on")
      with sigterm.deferred():
        live["state"] = {"x": jnp.zeros(4)}
  assert e.value.code == 128 + signal.SIGTERM
  assert calls == ["went on", "save"]


def test_open_run_moves_an_earlier_run_aside_or_refuses_other_settings(tmp_path):
  (tmp_path / "checkpoints" / "step_3").mkdir(parents=True)
  (tmp_path / "metrics.jsonl").write_text('{"step": 3}\n')
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.warns(UserWarning, match="moved to"):
    assert open_run(tmp_path, {"lr": 1.0}, resume=False) is None
  assert sorted(p.name for p in (tmp_path / "previous_runs" / "1").iterdir()) == ["checkpoints", "metrics.jsonl"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "notes.txt", "previous_runs"]
  with pytest.warns(UserWarning, match="previous_runs/2"):
    open_run(tmp_path, {"lr": 2.0}, resume=False)
  assert json.loads((tmp_path / "previous_runs" / "2" / "config.json").read_text()) == {"lr": 1.0}
  assert open_run(tmp_path, {"lr": 2.0, "steps": 9}, resume=True, may_change={"steps"}) == {"lr": 2.0}
  with pytest.raises(SettingsChanged, match=r"other settings \(theirs, ours\): \{'lr': \(2.0, 3.0\)\}"):
    open_run(tmp_path, {"lr": 3.0, "steps": 9}, resume=True, may_change={"steps"})
  assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 2.0, "steps": 9}
  assert settings_changes({"a": 1}, {"a": 1, "b": 2}, ()) == {"b": (None, 2)}
  assert move_aside(tmp_path / "empty") is None


# ---- the arithmetic experiment end to end ----

def test_new_run_in_a_used_dir_keeps_its_own_checkpoints_and_resumes_its_own_weights(tmp_path, full):
  d = tmp_path / "run"
  exp.main(tiny(d, seed=1, rl_steps=4))                       # another run, with higher checkpoint steps
  with pytest.warns(UserWarning, match="moved to"):
    exp.main(tiny(d, rl_steps=2, resume=False))                # the new run, cut after 2 steps
  assert saved_steps(d / "checkpoints") == [1, 2]
  assert saved_steps(d / "previous_runs" / "1" / "checkpoints") == [2, 3, 4]
  exp.main(tiny(d))                                            # resumes the new run, not the old one
  assert_same_rows(rows(d), full)


def test_resume_with_other_training_settings_is_refused_before_anything_is_written(tmp_path):
  d = tmp_path / "run"
  exp.main(tiny(d, rl_steps=1))
  stored, logged = (d / "config.json").read_text(), (d / "metrics.jsonl").read_text()
  for change in (dict(objective="dapo"), dict(lr=1e-3), dict(seed=1), dict(eval_size=8)):
    with pytest.raises(SettingsChanged, match=f"'{next(iter(change))}'"):
      exp.main(tiny(d, rl_steps=1, **change))
  assert (d / "config.json").read_text() == stored and (d / "metrics.jsonl").read_text() == logged


def test_restart_from_scratch_does_not_repeat_steps_and_all_corrupt_is_an_error(tmp_path, full):
  d = tmp_path / "run"
  exp.main(tiny(d, rl_steps=2))
  for step in (1, 2):                                          # every checkpoint corrupt
    truncate_largest_file(d / "checkpoints" / str(step) / "state")
  logged = (d / "metrics.jsonl").read_text()
  with pytest.warns(UserWarning, match="could not be restored"), pytest.raises(CorruptCheckpoints):
    exp.main(tiny(d))
  assert (d / "metrics.jsonl").read_text() == logged           # the error changed nothing
  for step in (1, 2):                                          # the first checkpoint was killed mid-write
    (d / "checkpoints" / str(step)).rename(d / "checkpoints" / f"{step}.orbax-checkpoint-tmp")
  with pytest.warns(UserWarning, match="restarts from step 0"):
    exp.main(tiny(d))
  assert_same_rows(rows(d), full)                              # steps 0..4 once each


def test_half_written_metrics_line_does_not_stop_the_resume(tmp_path, full):
  d = tmp_path / "run"
  exp.main(tiny(d, rl_steps=2))
  with (d / "metrics.jsonl").open("a") as f:                   # a kill while step 3's row was being written
    f.write('{"step": 3, "phase": "rl", "rew')
  with pytest.warns(UserWarning, match="half-written"):
    exp.main(tiny(d))
  assert_same_rows(rows(d), full)


def test_sigterm_during_an_evaluation_keeps_that_steps_row(tmp_path, monkeypatch, full):
  d = tmp_path / "run"
  real = exp.evaluate
  calls = []

  def terminated_during_the_step_2_evaluation(*a, **k):
    calls.append(1)
    out = real(*a, **k)
    if len(calls) == 2:                                        # calls: after the warm-up, step 2
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(exp, "evaluate", terminated_during_the_step_2_evaluation)
  with pytest.raises(SystemExit) as e:
    exp.main(tiny(d))
  assert e.value.code == 128 + signal.SIGTERM
  monkeypatch.setattr(exp, "evaluate", real)
  exp.main(tiny(d))
  assert_same_rows(rows(d), full)


def test_sigterm_after_the_train_step_donated_the_state_saves_that_step(tmp_path, monkeypatch, full):
  """The train step donates the state it is given: a SIGTERM once step 1 has trained cannot save step 0's state,
  so step 1 is logged and checkpointed, then the run stops."""
  d = tmp_path / "run"
  real = MetricsLogger.log

  def log(self, step, metrics, *, phase="rl"):
    real(self, step, metrics, phase=phase)
    if (step, phase) == (1, "rl"):
      os.kill(os.getpid(), signal.SIGTERM)
      np.zeros(1).sum()                                        # (Python runs the handler at the next bytecode)

  monkeypatch.setattr(MetricsLogger, "log", log)
  with pytest.raises(SystemExit) as e:
    exp.main(tiny(d))
  assert e.value.code == 128 + signal.SIGTERM
  assert saved_steps(d / "checkpoints") == [1]                 # not 0: that state went into step 1's update
  assert [r["step"] for r in rows(d) if r["phase"] == "rl"] == [1]
  monkeypatch.setattr(MetricsLogger, "log", real)
  exp.main(tiny(d))
  assert_same_rows(rows(d), full)


def test_sigterm_during_a_regular_save_leaves_that_checkpoint_and_saves_nothing_into_it(tmp_path, monkeypatch, full):
  d = tmp_path / "run"
  real = ckpt_lib.Checkpoints.save
  depth, deepest, positions = [0], [0], []

  def save(self, position, *a, **k):
    depth[0] += 1
    deepest[0] = max(deepest[0], depth[0])
    positions.append(position)
    try:
      out = real(self, position, *a, **k)
      if position == 2 and positions.count(2) == 1:
        os.kill(os.getpid(), signal.SIGTERM)                   # arrives before the save returns
        np.zeros(1).sum()                                      # (Python runs the handler at the next bytecode)
      return out
    finally:
      depth[0] -= 1

  monkeypatch.setattr(ckpt_lib.Checkpoints, "save", save)
  with pytest.raises(SystemExit) as e:
    exp.main(tiny(d))
  assert e.value.code == 128 + signal.SIGTERM
  assert deepest[0] == 1 and positions == [1, 2]               # no save nested in the one being written
  assert saved_steps(d / "checkpoints") == [1, 2]            # complete: the exit waited for the write
  monkeypatch.setattr(ckpt_lib.Checkpoints, "save", real)
  exp.main(tiny(d))
  assert_same_rows(rows(d), full)


def test_a_preemption_saves_at_the_step_every_process_reached_and_the_run_resumes(tmp_path, monkeypatch, full):
  d = tmp_path / "run"
  monkeypatch.setattr(ckpt_lib.Checkpoints, "reached_preemption", lambda self, step: step == 2)
  with pytest.raises(SystemExit) as e:
    exp.main(tiny(d, checkpoint_every=100))                    # no regular checkpoint before step 4
  assert e.value.code == 128 + signal.SIGTERM
  assert saved_steps(d / "checkpoints") == [2]
  monkeypatch.undo()
  exp.main(tiny(d))
  assert_same_rows(rows(d), full)


def test_checkpoints_in_another_directory_resume_and_are_not_reused_by_a_fresh_run(tmp_path, full):
  d, elsewhere = tmp_path / "run", tmp_path / "bucket" / "ckpt"
  exp.main(tiny(d, rl_steps=2, checkpoint_dir=str(elsewhere)))
  exp.main(tiny(d, checkpoint_dir=str(elsewhere)))
  assert_same_rows(rows(d), full)
  assert saved_steps(elsewhere) == [2, 3, 4] and not (d / "checkpoints").exists()
  logged = (d / "metrics.jsonl").read_text()
  with pytest.raises(ValueError, match="checkpoint_dir=.* is not empty"):
    exp.main(tiny(d, checkpoint_dir=str(elsewhere), resume=False))
  assert (d / "metrics.jsonl").read_text() == logged and not (d / "previous_runs").exists()
  with pytest.raises(SettingsChanged, match="checkpoint_dir"):  # resuming from other checkpoints is another run
    exp.main(tiny(d, checkpoint_dir=str(tmp_path / "other")))
