"""The deterministic training case shared by the 2-process test and its single-process reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax import objectives
from rl_jax.models import init_params, tiny_config
from rl_jax.train import RLBatch, init_state, make_rl_step

CFG = tiny_config(24, d_model=32, head_dim=8, ffn_dim=64, max_seq_len=16)
PROMPT = 4


def build_case():
  opt = optax.sgd(0.5)
  state = init_state(init_params(CFG, jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
  raw = make_rl_step(CFG, opt, objectives.dapo, prompt_len=PROMPT, jit=False)
  batches = []
  for seed in (0, 1):
    rng = np.random.default_rng(seed)
    b, t = 8, 6
    cmask = (np.arange(t)[None] < rng.integers(1, t + 1, b)[:, None]).astype(np.float32)
    tokens = rng.integers(3, 24, (b, PROMPT + t)).astype(np.int32)
    attn = np.concatenate([np.ones((b, PROMPT), np.int32), cmask.astype(np.int32)], 1)
    old = -rng.uniform(0.5, 4.0, (b, t)).astype(np.float32)
    batches.append(RLBatch(tokens, attn, cmask, old, rng.normal(size=b).astype(np.float32), None))
  return state, opt, raw, batches


def run_steps():
  """Single-process reference: the same two steps, unsharded."""
  state, _, raw, batches = build_case()
  step = jax.jit(raw)
  losses = []
  for b in batches:
    state, metrics = step(state, jax.tree.map(jnp.asarray, b))
    losses.append(float(metrics["loss"]))
  return losses, [float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(state.params)]
