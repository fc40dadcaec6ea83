"""Pod-sized GSM8K/MATH RL config: Qwen2.5-Math-1.5B or -7B on a Cloud TPU v5p slice, with its mesh.

Presets (JAX sees one device per v5p chip; a v5p-N slice has N/2 chips, 4 chips per host):

| preset            | slice  | chips | hosts | mesh (data, fsdp, tensor) |
|-------------------|--------|-------|-------|---------------------------|
| qwen2.5-math-1.5b | v5p-32 | 16    | 4     | (2, 8, 1)                 |
| qwen2.5-math-7b   | v5p-64 | 32    | 8     | (2, 4, 4)                 |

Parameters, Adam moments and the frozen reference are float32 and laid out by rl_jax.sharding's
partition rules (FSDP over `fsdp`, heads / MLP units over `tensor`, replicated over `data`); the
rollout batch (prompts_per_step × group_size rows) is split over data × fsdp. Whether a run fits a
slice is not counted by hand here: it is compiled for the slice (`python -m rl_jax.experiments.gsm8k_smollm2
--preset=pod --model=qwen2.5-math-7b --aot=v5p-64`, rl_jax.aot), which measures parameters, optimizer
state, activations, KV cache and XLA temporaries per chip. The mesh is config, not code:
`--mesh_data=-1 --mesh_fsdp=8 --mesh_tensor=2` re-lays the same run out.

  python -m rl_jax.experiments.configs.gsm8k_pod --preset=qwen2.5-math-7b            # print the plan
  launch/cpu_smoke.sh rl_jax.experiments.configs.gsm8k_pod --preset=tiny --smoke_steps=1 \
      --mesh_data=2 --mesh_fsdp=2 --mesh_tensor=2                            # sharded step on 8 CPU devices
  launch/tpu_pod.sh --name=rl-v5p --zone=us-east5-a --type=v5p-64 -- \
      rl_jax.experiments.configs.gsm8k_pod --preset=qwen2.5-math-7b --smoke_steps=2   # same on the pod

`--smoke_steps=N` initialises the state directly in its sharded layout (jit with out_shardings, so
a 7B model never materialises on one host) and runs N sharded train steps on random tokens: a
check that the mesh, the partition rules and the multi-host runtime work before a long run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax import objectives
from rl_jax.config import apply_overrides
from rl_jax.models import ModelConfig, init_params, tiny_config
from rl_jax.sharding import MeshConfig, fit_spec, jit_sharded_step, make_mesh, param_specs

# Shapes from the published Hugging Face configs of Qwen/Qwen2.5-Math-{1.5B,7B}.
MODELS = {
    "qwen2.5-math-1.5b": ModelConfig(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                                     head_dim=128, ffn_dim=8960, rope_theta=10000.0, rms_eps=1e-6,
                                     tie_embeddings=True, qkv_bias=True, max_seq_len=4096),
    "qwen2.5-math-7b": ModelConfig(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                                   head_dim=128, ffn_dim=18944, rope_theta=10000.0, rms_eps=1e-6,
                                   tie_embeddings=False, qkv_bias=True, max_seq_len=4096),
    "tiny": tiny_config(64, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64, max_seq_len=64),
}
PRESETS = {  # preset -> (TPU type, mesh)
    "qwen2.5-math-1.5b": ("v5p-32", (2, 8, 1)),
    "qwen2.5-math-7b": ("v5p-64", (2, 4, 4)),
    "tiny": ("cpu-8", (2, 2, 2)),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  preset: str = "qwen2.5-math-7b"   # a key of MODELS
  mesh_data: int = 0                # 0 = the preset's mesh; -1 fills the remaining devices
  mesh_fsdp: int = 0
  mesh_tensor: int = 0
  prompts_per_step: int = 128       # P prompts per RL step
  group_size: int = 8               # G samples per prompt (P × G rows split over data × fsdp)
  max_prompt_len: int = 512
  max_new_tokens: int = 1024
  objective: str = "dapo"
  lr: float = 1e-6                  # Adam, global-norm clip 1.0 (DAPO / verl recipe)
  beta: float = 0.0                 # KL-to-reference coefficient
  smoke_steps: int = 0              # > 0: run that many sharded train steps on random tokens
  smoke_rows: int = 0               # rows of the smoke batch (0 = 2 per device)

  def __post_init__(self):
    if self.preset not in MODELS:
      raise ValueError(f"Unknown preset {self.preset!r}; choose from {sorted(MODELS)}.")
    if self.objective not in objectives.names():
      raise ValueError(f"Unknown objective {self.objective!r}; choose from {objectives.names()}.")
    for name in ("prompts_per_step", "group_size", "max_prompt_len", "max_new_tokens"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
    if self.smoke_steps < 0 or self.smoke_rows < 0:
      raise ValueError("smoke_steps and smoke_rows must be >= 0.")

  @property
  def model(self) -> ModelConfig:
    return MODELS[self.preset]

  @property
  def mesh(self) -> MeshConfig:
    default = PRESETS[self.preset][1]
    given = (self.mesh_data, self.mesh_fsdp, self.mesh_tensor)
    return MeshConfig(*(g if g else d for g, d in zip(given, default)))


def optimizer(cfg: Config) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(cfg.lr))


def plan(cfg: Config, num_devices: int) -> dict:
  """Mesh shape, parameter count, large replicated weights and whether the batch splits (no devices needed)."""
  shape = cfg.mesh.shape(num_devices)
  mesh = jax.sharding.AbstractMesh(shape, ("data", "fsdp", "tensor"))
  abstract = jax.eval_shape(lambda k: init_params(cfg.model, k), jax.random.PRNGKey(0))
  specs = param_specs(mesh, abstract)
  replicated = []
  for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(
      specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))):
    split = math.prod(math.prod(mesh.shape[a] for a in (ax if isinstance(ax, tuple) else (ax,)))
                      for ax in spec if ax is not None)
    if split == 1 and x.size >= 1 << 20:
      replicated.append(jax.tree_util.keystr(path))
  rows = cfg.prompts_per_step * cfg.group_size
  return {"preset": cfg.preset, "tpu": PRESETS[cfg.preset][0], "devices": num_devices, "mesh": dict(mesh.shape),
          "params": int(sum(x.size for x in jax.tree.leaves(abstract))),
          "batch_rows": rows, "rows_per_batch_shard": rows / (shape[0] * shape[1]),
          "batch_divides": rows % (shape[0] * shape[1]) == 0, "large_replicated": replicated}


def smoke(cfg: Config, steps: int) -> list[dict]:
  """Sharded init (never materialised on one host) and `steps` sharded train steps on random tokens."""
  from rl_jax.train import RLBatch, init_state, make_rl_step
  mesh = make_mesh(cfg.mesh)
  opt = optimizer(cfg)
  model = cfg.model
  abstract = jax.eval_shape(lambda k: init_state(init_params(model, k), opt, k), jax.random.PRNGKey(0))
  prompt_len, new = min(cfg.max_prompt_len, 16), min(cfg.max_new_tokens, 16)
  rows = cfg.smoke_rows or 2 * jax.device_count()
  tokens = jax.ShapeDtypeStruct((rows, prompt_len + new), jnp.int32)
  per_token = jax.ShapeDtypeStruct((rows, new), jnp.float32)
  batch = RLBatch(tokens, tokens, per_token, per_token, jax.ShapeDtypeStruct((rows,), jnp.float32), None)
  raw = make_rl_step(model, opt, objectives.get(cfg.objective), prompt_len=prompt_len, jit=False)
  step, state_sh, batch_sh = jit_sharded_step(raw, mesh, abstract, opt, batch, donate=True)
  state = jax.jit(lambda k: init_state(init_params(model, k), opt, k), out_shardings=state_sh)(jax.random.PRNGKey(0))

  def make_batch(k):
    k1, k2, k3 = jax.random.split(k, 3)
    toks = jax.random.randint(k1, tokens.shape, 0, model.vocab_size, jnp.int32)
    old = -jax.random.uniform(k2, per_token.shape, jnp.float32, 0.5, 4.0)
    return RLBatch(toks, jnp.ones_like(toks), jnp.ones(per_token.shape), old,
                   jax.random.normal(k3, (rows,), jnp.float32), None)

  make = jax.jit(make_batch, out_shardings=batch_sh)
  out = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, make(jax.random.PRNGKey(100 + i)))
    loss = float(metrics["loss"])
    out.append({"step": i, "loss": loss, "grad_norm": float(metrics["grad_norm"]), "seconds": time.perf_counter() - t0})
  return out


def main(argv) -> dict:
  cfg = apply_overrides(Config(), argv)
  from rl_jax import distributed
  distributed.initialize()  # no-op unless RL_JAX_MULTIHOST=1 (set by launch/tpu_pod.sh)
  # The plan is for the preset's slice (its chip count) unless real devices are in use.
  n = jax.device_count() if cfg.smoke_steps else math.prod(PRESETS[cfg.preset][1])
  result = {"plan": plan(cfg, n)}
  if cfg.smoke_steps:
    result["smoke"] = smoke(cfg, cfg.smoke_steps)
  if jax.process_index() == 0:
    print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
