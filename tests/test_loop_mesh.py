"""The RL loop on a device mesh equals the same run on one device (8 fake CPU devices, see conftest)."""

import jax
import numpy as np
import pytest

from rl_jax.experiments import arithmetic_tiny as exp
from rl_jax import loop


def run(tmp_path, mesh):
  cfg = exp.Config(digits=1, d_model=32, sft_steps=20, sft_batch=16, rl_steps=2, prompts_per_step=4, group_size=4,
                   epochs=2, minibatches=2, beta=0.05, dynamic_sampling=True, max_gen_batches=2, eval_every=2,
                   eval_size=8, checkpoint_every=0, mesh=mesh, run_dir=str(tmp_path / mesh.replace(",", "_")),
                   progress_bar=False, packed=True)      # the loop's default layout (arithmetic_tiny's is plain)
  return exp.main(cfg)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  one = run(tmp_path_factory.mktemp("mesh"), "1,1,1")
  assert one["history"][0]["kl"] > 0 or one["history"][-1]["kl"] > 0   # β > 0: the reference term is live
  return one


# (2,2,2) shards over all three axes at once; (1,8,1), FSDP over all eight devices, is a third whole run
@pytest.mark.parametrize("mesh", ["2,2,2", pytest.param("1,8,1", marks=pytest.mark.slow)])
def test_a_run_on_a_mesh_equals_the_run_on_one_device(one_device, mesh, tmp_path):
  assert jax.device_count() == 8
  one, other = one_device, run(tmp_path, mesh)
  for a, b in zip(one["history"], other["history"]):
    assert a["reward"] == b["reward"] and a["gen_batches"] == b["gen_batches"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
  assert one["accuracy"] == other["accuracy"]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), one["params"], other["params"])
  sh = other["params_sharding"]["layers"]["wq"]
  assert sh.mesh.shape == dict(zip(("data", "fsdp", "tensor"), map(int, mesh.split(","))))


def test_the_mesh_option_is_checked_before_compute():
  with pytest.raises(ValueError, match="--mesh expects three sizes"):
    exp.Config(mesh="2,2")
  with pytest.raises(ValueError, match="needs 16 devices, have 8"):
    loop.make_mesh("2,8,1")
