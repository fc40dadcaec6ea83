"""Sharded == unsharded on 8 fake CPU devices, for objectives, advantages and a full train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rl_jax import advantages, objectives
from rl_jax.models import init_params, tiny_config
from rl_jax.sharding import (MeshConfig, jit_sharded_step, make_mesh, param_specs, shard,
                             state_shardings)
from rl_jax.train import RLBatch, init_state, make_rl_step

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
CFG = tiny_config(24, d_model=32, head_dim=8, ffn_dim=64, max_seq_len=16)
PROMPT = 4


def test_mesh_config_fills_the_free_axis_and_rejects_bad_shapes():
  assert MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == (2, 2, 2)
  assert MeshConfig().shape(8) == (8, 1, 1)
  with pytest.raises(ValueError, match="At most one mesh axis"):
    MeshConfig(data=-1, fsdp=-1).shape(8)
  with pytest.raises(ValueError, match="do not split"):
    MeshConfig(data=-1, fsdp=3).shape(8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    MeshConfig(data=2, fsdp=2, tensor=1).shape(8)


def test_param_specs_follow_the_rules_and_skip_indivisible_dims():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  specs = param_specs(mesh, init_params(CFG, jax.random.PRNGKey(0)))
  assert specs["layers"]["wq"] == P(None, "fsdp", "tensor")
  assert specs["layers"]["w_down"] == P(None, "tensor", "fsdp")
  assert specs["embed"] == P("tensor", "fsdp")   # 24 % 2 == 0
  odd = param_specs(mesh, {"embed": np.zeros((23, 32))})
  assert odd["embed"] == P(None, "fsdp")          # 23 rows do not split over tensor = 2


def batch(seed=0, b=8):
  rng = np.random.default_rng(seed)
  t = 6
  lengths = rng.integers(0, t + 1, b)
  cmask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  tokens = rng.integers(3, 24, (b, PROMPT + t)).astype(np.int32)
  attn = np.concatenate([np.ones((b, PROMPT), np.int32), cmask.astype(np.int32)], 1)
  old = -rng.uniform(0.5, 4.0, (b, t)).astype(np.float32)
  return RLBatch(jnp.asarray(tokens), jnp.asarray(attn), jnp.asarray(cmask), jnp.asarray(old),
                 jnp.asarray(rng.normal(size=b).astype(np.float32)), None)


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("name", ["dapo", "grpo", "gspo", "dr_grpo"])
def test_objectives_are_identical_sharded_and_unsharded(name, shape):
  mesh = make_mesh(MeshConfig(*shape))
  rng = np.random.default_rng(1)
  b, t = 8, 10
  mask = (np.arange(t)[None] < rng.integers(0, t + 1, b)[:, None]).astype(np.float32)  # ragged: per-shard counts differ
  args = [rng.normal(-1, 0.3, (b, t)).astype(np.float32) * mask for _ in range(3)] + [rng.normal(size=b).astype(
      np.float32), mask]
  logp, old, ref, adv, m = (jnp.asarray(x) for x in args)
  kw = dict(ref_logp=ref, max_len=12) if name == "dr_grpo" else dict(ref_logp=ref)
  fn = lambda lp, o, a, mm, r: objectives.get(name)(lp, o, a, mm, **dict(kw, ref_logp=r))[0]
  vg = jax.value_and_grad(fn)
  want = jax.jit(vg)(logp, old, adv, m, ref)
  sh = NamedSharding(mesh, P(("data", "fsdp")))
  placed = [jax.device_put(x, sh) for x in (logp, old, adv, m, ref)]
  got = jax.jit(vg)(*placed)
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", MESHES)
def test_advantages_are_identical_sharded_and_unsharded(shape):
  mesh = make_mesh(MeshConfig(*shape))
  rng = np.random.default_rng(2)
  r = jnp.asarray(rng.integers(0, 2, (8, 4)).astype(np.float32))
  tokens = jnp.asarray(rng.integers(0, 2, (8, 4, 5)).astype(np.int32))
  mask = jnp.asarray((rng.uniform(size=(8, 4, 5)) > 0.2).astype(np.float32))
  sh = NamedSharding(mesh, P(("data", "fsdp")))
  for fn, args in ((advantages.grpo, (r,)), (advantages.tempo, (tokens, mask, r)),
                   (advantages.reinforce_pp_baseline, (r, mask))):
    want = jax.jit(fn)(*args)
    got = jax.jit(fn)(*[jax.device_put(a, sh) for a in args])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", MESHES)
def test_train_step_loss_grads_and_update_match_single_device(shape):
  """Tolerance: 1e-5 relative (float32 reductions in a different order across shards).

  SGD makes the update linear in the gradient, so it compares the gradients themselves; Adam's
  m/sqrt(v) would turn 1e-9 differences in near-zero gradients into lr-sized ones.
  """
  opt = optax.sgd(0.5)
  params = init_params(CFG, jax.random.PRNGKey(0))
  state = init_state(params, opt, jax.random.PRNGKey(1))
  raw = make_rl_step(CFG, opt, objectives.dapo, prompt_len=PROMPT, jit=False)
  data = batch()
  want_state, want_metrics = jax.jit(raw)(state, data)
  mesh = make_mesh(MeshConfig(*shape))
  step, st_sh, b_sh = jit_sharded_step(raw, mesh, state, opt, data)
  got_state, got_metrics = step(shard(state, st_sh), shard(data, b_sh))
  for key in ("loss", "grad_norm", "clip_frac"):
    np.testing.assert_allclose(float(got_metrics[key]), float(want_metrics[key]), rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # The update keeps every array's sharding (no silent re-layout).
  assert jax.tree.map(lambda x: x.sharding, got_state.params) == jax.tree.map(lambda s: s, st_sh.params)


def test_checkpoint_saved_on_one_mesh_restores_onto_another(tmp_path):
  import orbax.checkpoint as ocp
  opt = optax.adam(1e-2)
  state = init_state(init_params(CFG, jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
  mesh_a = make_mesh(MeshConfig(8, 1, 1))
  mesh_b = make_mesh(MeshConfig(2, 2, 2))
  placed = shard(state, state_shardings(mesh_a, state, opt))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", placed)
  ckpt.wait_until_finished()
  target_sh = state_shardings(mesh_b, state, opt)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), state, target_sh)
  restored = ckpt.restore(tmp_path / "ckpt", abstract)
  for a, b, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(target_sh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == s


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_sampler_is_identical_sharded_and_unsharded(shape):
  from rl_jax.sampling import generate
  from rl_jax.sharding import jit_sharded_generate
  params = init_params(CFG, jax.random.PRNGKey(0))
  rng = np.random.default_rng(4)
  prompts = jnp.asarray(rng.integers(3, 24, (8, 5)), jnp.int32)
  mask = jnp.asarray((np.arange(5)[None] >= rng.integers(0, 3, 8)[:, None]).astype(np.int32))  # left padding
  static = dict(cfg=CFG, max_new_tokens=6, temperature=0.0, stop_tokens=(5,))
  want = generate(params, prompts=prompts, prompt_mask=mask, rng=jax.random.PRNGKey(1), **static)
  mesh = make_mesh(MeshConfig(*shape))
  fn, p_sh = jit_sharded_generate(mesh, params, **static)
  got = fn(shard(params, p_sh), prompts, mask, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(want.mask))
  np.testing.assert_allclose(np.asarray(got.logp), np.asarray(want.logp), atol=1e-5)
  assert got.tokens.sharding.spec == P(("data", "fsdp"))
