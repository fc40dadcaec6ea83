"""CPU seconds and compiled temporary memory of the RL train step under each layer-recomputation setting (remat
off, "full", "dots"; "full-unrolled", "dots-unrolled" with the layers unrolled instead of scanned), at the GSM8K experiment's CPU default shape with SmolLM2-135M-Instruct's real weights.

The step is the loop's packed train step (`make_rl_step(..., packed=True)`, GRPO, Adam with global-norm clipping
1.0, float32) on a GSM8K-like batch (`prefix_grouper_bench.gsm8k_like_batch`: 8 prompts x 4 samples, prompts of
90-140 tokens padded to 192, completions long-tailed up to 192), packed as the loop packs it. Each setting is
compiled first (its `memory_analysis()` temporary bytes printed), then the settings are timed in turn, round
after round (A B C A B C ...), in CPU seconds of this process, so a load change on the machine hits all alike.

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OMP_NUM_THREADS=1 taskset -c 1 \\
    python -m rl_jax.experiments.benchmarks.remat_bench [--settings=off,full,dots] [--rounds=2] [--max-temp-gib=8] \\
    [--layers=30]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import objectives
from rl_jax.experiments.benchmarks.prefix_grouper_bench import gsm8k_like_batch
from rl_jax.loop_run import rl_optimizer
from rl_jax.machine import cpu_model
from rl_jax.packing import layout_stats, pack_groups, span_limit
from rl_jax.train import RLBatch, init_state, make_rl_step

SETTINGS = {"off": dict(remat=False), "full": dict(remat=True, remat_policy="full"),
            "dots": dict(remat=True, remat_policy="dots"),
            # the layer stack unrolled instead of scanned (ModelConfig.unroll_layers)
            "full-unrolled": dict(remat=True, remat_policy="full", unroll_layers=True),
            "dots-unrolled": dict(remat=True, remat_policy="dots", unroll_layers=True)}
WIDTH = 192   # prompts padded to this many tokens


def packed_batch(tokens: np.ndarray, attn: np.ndarray) -> tuple[RLBatch, dict]:
  """The RLBatch of a [P·G, WIDTH + T] batch in the loop's packed layout (random advantages), and its layout stats."""
  packed = pack_groups(tokens, attn, WIDTH, max_span=span_limit(tokens.shape[1]))
  adv = np.random.default_rng(1).normal(size=tokens.shape[0])
  batch = RLBatch(jnp.asarray(tokens), jnp.asarray(attn), jnp.asarray(attn[:, WIDTH:], jnp.float32), None,
                  jnp.asarray(adv, jnp.float32), packed=jax.tree.map(jnp.asarray, packed))
  return batch, layout_stats(packed, tokens, attn)


def first_layers(params: dict, cfg, n: int):
  """The model cut to its first n decoder layers (embedding, final norm and head unchanged)."""
  params = dict(params, layers=jax.tree.map(lambda x: x[:n], params["layers"]))
  return params, dataclasses.replace(cfg, n_layers=n)


def compiled_steps(cfg, settings, state, batch, max_temp: float) -> dict:
  """{setting: compiled step} for each setting whose compiled temporary memory is at most max_temp bytes."""
  steps = {}
  for name in settings:
    step = make_rl_step(dataclasses.replace(cfg, **SETTINGS[name]), rl_optimizer(1e-5), objectives.grpo,
                        dict(beta=0.0), prompt_len=WIDTH, packed=True)
    t0 = time.process_time()
    compiled = step.lower(state, batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    print(f"{name}: compiled in {time.process_time() - t0:.1f} CPU s, temporary memory {temp / 2**30:.2f} GiB",
          flush=True)
    if temp <= max_temp:
      steps[name] = compiled
    else:
      print(f"{name}: over --max-temp-gib, not timed", flush=True)
  return steps


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--settings", default="off,full,dots")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--max-temp-gib", type=float, default=8.0)
  ap.add_argument("--layers", type=int, default=30, help="the first N of SmolLM2's 30 layers (less memory and time)")
  args = ap.parse_args()
  settings = args.settings.split(",")
  unknown = set(settings) - set(SETTINGS)
  if unknown or args.rounds < 1 or not 1 <= args.layers <= 30:
    raise ValueError(f"settings must be among {sorted(SETTINGS)} (got {sorted(unknown)}), rounds >= 1, "
                     "1 <= layers <= 30.")
  from rl_jax.models import load_gguf, smollm2_gguf_path

  params, cfg = first_layers(*load_gguf(smollm2_gguf_path()), args.layers)
  batch, stats = packed_batch(*gsm8k_like_batch())
  state = init_state(jax.tree.map(jnp.asarray, params), rl_optimizer(1e-5), jax.random.PRNGKey(0))
  print(f"{cpu_model()}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; SmolLM2-135M float32; "
        f"{cfg.n_layers} layers; real tokens {stats['real_tokens']}, distinct {stats['distinct_tokens']}, packed rows "
        f"{batch.packed.tokens.shape[0]} x {batch.packed.tokens.shape[1]}", flush=True)
  steps = compiled_steps(cfg, settings, state, batch, args.max_temp_gib * 2**30)
  cpu = {name: [] for name in steps}
  for r in range(args.rounds):
    for name, step in steps.items():
      t0 = time.process_time()
      jax.block_until_ready(step(state, batch))
      cpu[name].append(time.process_time() - t0)
      print(f"round {r}: {name} {cpu[name][-1]:.1f} CPU s (load average {os.getloadavg()[0]:.2f})", flush=True)
  for name, ts in cpu.items():
    print(f"{name}: median {np.median(ts):.1f} CPU s per step over {len(ts)} ({', '.join(f'{t:.1f}' for t in ts)})")


if __name__ == "__main__":
  main()
