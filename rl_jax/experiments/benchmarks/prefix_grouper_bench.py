"""Prefix Grouper saving versus prompt length: forward + backward time of the shared-prefix forward vs
the standard forward on G copies of prompt + completion (tiny model, CPU unless a GPU is present).

  python -m rl_jax.experiments.benchmarks.prefix_grouper_bench [--group=8] [--completion=32]

`--train-step` instead times the RL train step (GRPO, Adam, remat) in the plain [B, P + T] layout and in the
packed layout the loop uses by default (rl_jax.packing: each prompt once, no padding), side by side on
GSM8K-CPU-default-like shapes: 8 prompts × 4 samples, prompts padded to 192 and completions to 192 tokens,
SmolLM2-135M's shapes (random weights; `--layers` of its 30), prompt and completion lengths drawn like the
measured GSM8K rollouts (real prompts ~90–140 tokens, completions long-tailed with ~45% at the cap).

  python -m rl_jax.experiments.benchmarks.prefix_grouper_bench --train-step [--layers=4] [--repeats=2]
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.experiments.benchmarks.timing import median_time

import optax

from rl_jax import objectives
from rl_jax.logprobs import token_logprobs
from rl_jax.machine import cpu_model
from rl_jax.models import init_params, tiny_config
from rl_jax.models.config import ModelConfig
from rl_jax.packing import layout_stats, pack_groups, span_limit
from rl_jax.prefix_grouper import grouped_logprobs
from rl_jax.train import RLBatch, init_state, make_rl_step


def smollm2_shapes(layers: int) -> ModelConfig:
  """SmolLM2-135M-Instruct's architecture (30 layers, d 576, 9 heads / 3 KV heads, FFN 1536, vocab 49152, tied),
  `layers` deep, with remat as the GSM8K experiment runs it."""
  return ModelConfig(vocab_size=49152, d_model=576, n_layers=layers, n_heads=9, n_kv_heads=3, head_dim=64,
                     ffn_dim=1536, rope_theta=100000.0, max_seq_len=2048, remat=True)


def gsm8k_like_batch(prompts=8, group=4, width=192, new=192, seed=0):
  """tokens, attn [P·G, width + new]: left-padded prompts of 90–140 real tokens, right-padded completions,
  45% at the cap and the rest uniform in 40..cap (long-tailed like the measured T = 1.0 rollouts)."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((prompts * group, width + new), np.int32)
  attn = np.zeros_like(tokens)
  for i in range(prompts):
    lp = int(rng.integers(90, 141))
    prompt = rng.integers(1, 49152, lp)
    for j in range(group):
      n = new if rng.random() < 0.45 else int(rng.integers(40, new + 1))
      r = i * group + j
      tokens[r, width - lp:width], tokens[r, width:width + n] = prompt, rng.integers(1, 49152, n)
      attn[r, width - lp:width + n] = 1
  return tokens, attn


def train_step_table(layers: int, repeats: int):
  """Plain vs packed train step: positions computed per distinct real token, and wall time."""
  cfg = smollm2_shapes(layers)
  tokens, attn = gsm8k_like_batch()
  width = 192
  opt = optax.adam(1e-5)
  state = init_state(init_params(cfg, jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
  b = tokens.shape[0]
  packed = pack_groups(tokens, attn, width, max_span=span_limit(tokens.shape[1]))   # as the loop packs
  stats = layout_stats(packed, tokens, attn)
  batch = RLBatch(jnp.asarray(tokens), jnp.asarray(attn), jnp.asarray(attn[:, width:], jnp.float32), None,
                  jnp.asarray(np.random.default_rng(1).normal(size=b), jnp.float32),
                  packed=jax.tree.map(jnp.asarray, packed))
  print(f"{cpu_model()} ({jax.device_count()} CPU device), jax {jax.__version__}, python {platform.python_version()}; "
        f"SmolLM2-135M shapes, {layers} of 30 layers, float32, remat; 8 prompts x 4 samples, P + T = 192 + 192; "
        f"real tokens {stats['real_tokens']}, distinct {stats['distinct_tokens']}; packed rows "
        f"{packed.tokens.shape[0]} x {packed.tokens.shape[1]}")
  print("| layout | positions computed | / distinct real tokens | train step (s) | speed-up |")
  print("|---|---|---|---|---|")
  times = {}
  for name, is_packed, positions in (("plain [B, P + T]", False, stats["plain_positions"]),
                                     ("packed (default)", True, stats["packed_positions"])):
    step = make_rl_step(cfg, opt, objectives.grpo, dict(beta=0.0), prompt_len=width, packed=is_packed)
    times[name] = median_time(lambda s: step(s, batch)[1]["loss"], state, repeats=repeats)
    ratio = times["plain [B, P + T]"] / times[name]
    print(f"| {name} | {positions:,} | {positions / stats['distinct_tokens']:.2f}x | {times[name]:.1f} | "
          f"{ratio:.2f}x |", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--group", type=int, default=8)
  ap.add_argument("--completion", type=int, default=32)
  ap.add_argument("--prompts", default="64,256,1024")
  ap.add_argument("--train-step", action="store_true", help="plain vs packed RL train step (GSM8K-like shapes)")
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--repeats", type=int, default=2)
  args = ap.parse_args()
  if args.train_step:
    return train_step_table(args.layers, args.repeats)
  g, ls = args.group, args.completion
  print(f"device: {jax.devices()[0].device_kind}; model: 2 layers, d=64; G={g}, completion={ls}")
  print("| prompt tokens | standard fwd+bwd (ms) | shared-prefix fwd+bwd (ms) | speed-up |")
  print("|---|---|---|---|")
  for lp in (int(x) for x in args.prompts.split(",")):
    cfg = tiny_config(512, max_seq_len=lp + ls)
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    prefix = jnp.asarray(rng.integers(1, 512, lp), jnp.int32)
    suffixes = jnp.asarray(rng.integers(1, 512, (g, ls)), jnp.int32)
    smask = jnp.ones((g, ls), jnp.int32)
    grouped = jax.jit(jax.grad(lambda p: grouped_logprobs(p, cfg, prefix, suffixes, smask).sum()))
    tokens = jnp.concatenate([jnp.broadcast_to(prefix, (g, lp)), suffixes], axis=1)
    standard = jax.jit(jax.grad(lambda p: token_logprobs(p, tokens, cfg, prompt_len=lp)[0].sum()))
    t_std, t_grp = median_time(standard, params, repeats=5), median_time(grouped, params, repeats=5)
    print(f"| {lp} | {t_std * 1e3:.1f} | {t_grp * 1e3:.1f} | {t_std / t_grp:.2f}x |")


if __name__ == "__main__":
  main()
