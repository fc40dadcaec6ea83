"""The pod config: its documented meshes shard every large weight and split the batch evenly;
the mesh is changed by overrides alone; a sharded smoke step runs on 8 fake CPU devices."""

import jax
import numpy as np
import pytest

from rl_jax.experiments.configs import gsm8k_pod
from rl_jax.config import apply_overrides



def hand_count(m):
  """Parameter count from the architecture (independent of init_params)."""
  q, kv = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
  layer = m.d_model * (q + 2 * kv) + q * m.d_model + 3 * m.d_model * m.ffn_dim + 2 * m.d_model
  layer += (q + 2 * kv) if m.qkv_bias else 0
  return m.n_layers * layer + m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2) + m.d_model


@pytest.mark.parametrize("preset,devices,mesh,billions", [("qwen2.5-math-1.5b", 16, (2, 8, 1), 1.54),
                                                          ("qwen2.5-math-7b", 32, (2, 4, 4), 7.62)])
def test_presets_shard_every_large_weight(preset, devices, mesh, billions):
  cfg = apply_overrides(gsm8k_pod.Config(), [f"--preset={preset}", "--beta=0.04"])
  p = gsm8k_pod.plan(cfg, devices)
  assert tuple(p["mesh"].values()) == mesh and p["devices"] == devices
  assert p["params"] == hand_count(cfg.model) and round(p["params"] / 1e9, 2) == billions  # Qwen2.5 model cards
  assert p["large_replicated"] == []
  assert p["batch_divides"]
  assert "param_bytes_per_device" not in p   # memory is measured by compiling for the slice (rl_jax.aot)


def test_the_mesh_is_a_config_override():
  cfg = apply_overrides(gsm8k_pod.Config(), ["--mesh_data=-1", "--mesh_fsdp=4", "--mesh_tensor=2"])
  assert gsm8k_pod.plan(cfg, 32)["mesh"] == {"data": 4, "fsdp": 4, "tensor": 2}
  with pytest.raises(ValueError, match="do not split"):
    gsm8k_pod.plan(apply_overrides(gsm8k_pod.Config(), ["--mesh_data=-1", "--mesh_fsdp=3"]), 32)
  with pytest.raises(ValueError, match="Unknown preset"):
    apply_overrides(gsm8k_pod.Config(), ["--preset=qwen9"])
  with pytest.raises(ValueError, match="Unknown objective"):
    apply_overrides(gsm8k_pod.Config(), ["--objective=nope"])


def test_smoke_step_runs_sharded_on_fake_devices():
  assert jax.device_count() == 8
  cfg = apply_overrides(gsm8k_pod.Config(), ["--preset=tiny", "--smoke_steps=2"])
  out = gsm8k_pod.smoke(cfg, 2)
  assert [o["step"] for o in out] == [0, 1]
  assert all(np.isfinite(o["loss"]) and o["grad_norm"] > 0 for o in out)
