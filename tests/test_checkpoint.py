"""rl_jax.checkpoint on orbax's CheckpointManager: sharded restores, the meta record read as untrusted data,
the earlier layout refused, and two processes saving, restoring and stopping at a preemption together."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from local_processes import run_workers
from rl_jax.checkpoint import (Checkpoints, OldCheckpointLayout, abstract, check_layout, check_meta, saved_steps)
from rl_jax.sharding import MeshConfig, make_mesh, state_shardings
from rl_jax.train import init_state



def sharded_state():
  opt = optax.adam(1e-2)
  params = {"embed": jnp.arange(64.0 * 16).reshape(64, 16), "w": jnp.arange(16.0 * 8).reshape(16, 8) / 7}
  return init_state(params, opt, jax.random.PRNGKey(3)), opt


def test_a_state_saved_on_one_mesh_restores_onto_another_with_its_shardings(tmp_path):
  state, opt = sharded_state()
  mesh_a, mesh_b = make_mesh(MeshConfig(2, 2, 2)), make_mesh(MeshConfig(8, 1, 1))
  placed = jax.device_put(state, state_shardings(mesh_a, state, opt))
  with Checkpoints(tmp_path) as ckpt:
    ckpt.save(5, placed, placed.params)
  target = state_shardings(mesh_b, state, opt)
  with Checkpoints(tmp_path) as ckpt:
    restored = ckpt.restore_latest(abstract(state, target), abstract(state.params, target.params))
  assert restored.position == 5
  for got, want, sh in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state), jax.tree.leaves(target)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got.sharding == sh                     # read straight into the target layout
  assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(restored.state))
  np.testing.assert_array_equal(np.asarray(restored.ref_params["embed"]), np.asarray(state.params["embed"]))
  assert restored.ref_params["embed"].sharding == target.params["embed"]


@pytest.mark.parametrize("meta, error", [
    ([1, 2], "format 2, found 'list'"),
    ({"format": 1, "position": 3, "items": ["state"]}, "format 2, found 1"),
    ({"format": 2, "position": "3", "items": ["state"]}, "position '3'"),
    ({"format": 2, "position": True, "items": ["state"]}, "position True"),
    ({"format": 2, "position": 3, "items": ["state", "__import__('os')"]}, "are not a list of"),
    ({"format": 2, "position": 3, "items": "state"}, "are not a list of"),
    ({"format": 2, "position": 3, "items": [["state"]]}, "are not a list of"),
    ({"format": 2, "position": 3, "items": ["ref_params"]}, r"holds no \['state'\]"),
])
def test_the_meta_record_is_checked_before_any_array_is_read(meta, error):
  with pytest.raises(ValueError, match=error):
    check_meta(meta, 3, ["state"])
  check_meta({"format": 2, "position": 3, "items": ["ref_params", "state"]}, 3, ["state"])   # a good one passes


def test_checkpoints_of_the_earlier_layout_are_refused_naming_the_format(tmp_path):
  from rl_jax.experiments import arithmetic_tiny as exp
  from rl_jax.loop import RunDir
  (tmp_path / "checkpoints" / "step_2" / "state").mkdir(parents=True)      # rl_jax's format-1 layout
  (tmp_path / "checkpoints" / "step_2" / "COMPLETE").write_text("2")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(OldCheckpointLayout, match="format 1 .step_2: .*only format 2.*--resume=false"):
    check_layout(tmp_path / "checkpoints")
  cfg = exp.Config(digits=1, d_model=32, rl_steps=4, run_dir=str(tmp_path), progress_bar=False)
  with pytest.raises(OldCheckpointLayout):
    with RunDir(cfg, resumable=exp.RESUMABLE):
      pass
  assert (tmp_path / "config.json").read_text() == "{}" and not (tmp_path / "run.lock").exists()   # nothing written
  with pytest.warns(UserWarning, match="moved to"):
    with RunDir(dataclasses.replace(cfg, resume=False), resumable=exp.RESUMABLE) as rd:
      assert rd.ckpt.steps() == []
  assert saved_steps(tmp_path / "previous_runs" / "1" / "checkpoints") == []
  assert (tmp_path / "previous_runs" / "1" / "checkpoints" / "step_2" / "COMPLETE").exists()


def test_two_processes_save_restore_and_stop_at_the_same_preemption_step(tmp_path):
  directory = tmp_path / "ckpt"
  codes, logs = run_workers("multiprocess_checkpoint_worker.py", 2, lambda i: (directory, tmp_path / f"out_{i}.json"), 150)
  assert codes == [0, 0], "\n".join(logs)[-4000:]
  outs = [json.loads((tmp_path / f"out_{i}.json").read_text()) for i in range(2)]
  for out in outs:
    assert out["steps"] == [2, 3] and out["restored_step"] == 3      # keep=2: the manager deleted step 1
    assert out["same_sharding"] and out["local_shards_equal"]
  assert outs[0]["preempted_at"] == outs[1]["preempted_at"] >= 6      # one notice, one step for both
  assert saved_steps(directory) == [3, outs[0]["preempted_at"]]


def test_the_checkpoint_dir_is_the_run_dirs_own_or_any_path_orbax_reaches():
  from rl_jax import loop
  from rl_jax.experiments import arithmetic_tiny as exp
  cfg = exp.Config(run_dir="/runs/a")
  local = loop.checkpoint_dir(cfg)
  assert str(local) == "/runs/a/checkpoints" and not loop.is_shared_storage(local)
  gs = loop.checkpoint_dir(dataclasses.replace(cfg, checkpoint_dir="gs://bucket/runs/a"))
  assert loop.is_shared_storage(gs)
  assert str(gs / "4") == "gs://bucket/runs/a/4"     # etils.epath keeps the scheme (pathlib would give gs:/bucket)


def test_a_relative_checkpoint_dir_saves_and_restores(tmp_path, monkeypatch):
  # orbax writes only absolute paths; `--run_dir=runs/x` from the command line is relative.
  monkeypatch.chdir(tmp_path)
  state, _ = sharded_state()
  with Checkpoints("runs/x/checkpoints") as ckpt:
    ckpt.save(2, state)
  assert saved_steps(tmp_path / "runs/x/checkpoints") == [2]
  with Checkpoints("runs/x/checkpoints") as ckpt:
    restored = ckpt.restore_latest(abstract(state))
  assert restored.position == 2
  np.testing.assert_array_equal(np.asarray(restored.state.params["w"]), np.asarray(state.params["w"]))


def test_the_replay_item_is_json_data_saved_and_restored_as_written_and_required_when_asked_for(tmp_path):
  state, _ = sharded_state()
  record = {"format": 1, "questions": [[3, [{"reward": 1.0, "data": "AAAA"}]]]}
  with Checkpoints(tmp_path) as ckpt:
    ckpt.save(1, state)                      # a run without replay
    ckpt.save(2, state, replay=record)
  with Checkpoints(tmp_path) as ckpt:
    restored = ckpt.restore(2, abstract(state), replay=True)
    assert restored.replay == record and ckpt.restore(2, abstract(state)).replay is None
    with pytest.raises(ValueError, match=r"holds no \['replay'\]"):
      ckpt.restore(1, abstract(state), replay=True)
  assert json.loads((tmp_path / "2" / "meta" / "metadata").read_text())["items"] == ["replay", "state"]
