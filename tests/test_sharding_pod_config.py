"""The pod recipe's layout: on its slices (and another mesh given by --mesh) every large weight of the published
Qwen2.5-Math models is sharded and the rollout batch splits evenly; the mesh is one command-line option. Whether
the run fits a slice is compiled, not counted (tests/test_aot.py, rl_jax.aot)."""

import math

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from rl_jax import loop
from rl_jax.models import init_params
from rl_jax.models.published import published_config
from rl_jax.sharding import AXES, BATCH, param_specs


def hand_count(m):
  """Parameter count from the architecture (independent of init_params)."""
  q, kv = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
  layer = m.d_model * (q + 2 * kv) + q * m.d_model + 3 * m.d_model * m.ffn_dim + 2 * m.d_model
  layer += (q + 2 * kv) if m.qkv_bias else 0
  return m.n_layers * layer + m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2) + m.d_model


def replicated_large_weights(mesh, params) -> list[str]:
  """Leaves of at least 2^20 elements that no mesh axis splits."""
  specs = jax.tree.leaves(param_specs(mesh, params), is_leaf=lambda s: isinstance(s, PartitionSpec))
  out = []
  for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(params), specs):
    split = math.prod(mesh.shape[a] for ax in spec if ax is not None for a in (ax if isinstance(ax, tuple) else (ax,)))
    if split == 1 and x.size >= 1 << 20:
      out.append(jax.tree_util.keystr(path))
  return out


@pytest.mark.parametrize("model,chips,billions", [("qwen2.5-math-1.5b", 16, 1.54), ("qwen2.5-math-7b", 32, 7.62)])
@pytest.mark.parametrize("mesh_option", ["1,-1,1", "2,-1,4"])
def test_pod_meshes_shard_every_large_weight(model, chips, billions, mesh_option):
  from rl_jax.experiments import gsm8k_smollm2 as exp
  cfg = exp.make_config(["--preset=pod", f"--model={model}", f"--mesh={mesh_option}"])
  shape = loop.mesh_config(cfg.mesh).shape(chips)
  mesh = AbstractMesh(shape, AXES)
  m = published_config(model)
  params = jax.eval_shape(lambda: init_params(m, jax.random.PRNGKey(0)))
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n == hand_count(m) and round(n / 1e9, 2) == billions          # the Qwen2.5-Math model cards
  assert replicated_large_weights(mesh, params) == []
  shards = math.prod(mesh.shape[a] for a in BATCH)
  assert cfg.prompts_per_step % shards == 0 and (cfg.prompts_per_step * cfg.group_size // cfg.minibatches) % shards == 0


def test_the_mesh_is_one_option():
  from rl_jax.experiments import gsm8k_smollm2 as exp
  assert exp.make_config(["--preset=pod"]).mesh == "1,-1,1"                  # FSDP over the whole slice
  assert loop.mesh_config(exp.make_config(["--preset=pod", "--mesh=-1,4,2"]).mesh).shape(32) == (4, 4, 2)
  with pytest.raises(ValueError, match="spelled --mesh=data,fsdp,tensor"):
    exp.make_config(["--preset=pod", "--mesh_data=2"])
  with pytest.raises(ValueError, match="--mesh expects three sizes"):
    exp.make_config(["--mesh=2,2"])
