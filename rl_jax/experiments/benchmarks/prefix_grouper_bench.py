"""Prefix Grouper saving versus prompt length: forward + backward time of the shared-prefix forward vs
the standard forward on G copies of prompt + completion (tiny model, CPU unless a GPU is present).

  python -m rl_jax.experiments.benchmarks.prefix_grouper_bench [--group=8] [--completion=32]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.experiments.benchmarks.timing import median_time

from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config
from rl_jax.prefix_grouper import grouped_logprobs


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--group", type=int, default=8)
  ap.add_argument("--completion", type=int, default=32)
  ap.add_argument("--prompts", default="64,256,1024")
  args = ap.parse_args()
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
