"""CPU seconds of the packed layout's grouped attention (`rl_jax.prefix_grouper.grouped_attention`), forward +
backward of one SmolLM2-135M layer's heads (9 query heads, 3 key/value heads of 64), at the GSM8K CPU default
step's windows: 8 groups (prompts of 80-150 tokens, prompt window 181) of 4 completions of 192 tokens, packed as
R rows of 7168 / R positions. Paths side by side: the keys and values gathered per query block before the loop
(the CPU default) and sliced inside it (accelerators), each at blocks of 32 and 64 queries; random inputs,
float32, the median of `--calls` calls after compilation, in CPU seconds of this process.

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OMP_NUM_THREADS=1 taskset -c 1 \\
    python -m rl_jax.experiments.benchmarks.grouped_attention_bench [--rows=4,1] [--calls=3]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.machine import cpu_model
from rl_jax.models.config import ModelConfig
from rl_jax.prefix_grouper import grouped_attention

PROMPTS, GROUP, NEW, PROMPT_WINDOW, POSITIONS = (120, 100, 150, 90, 130, 110, 140, 80), 4, 192, 181, 7168
CFG = ModelConfig(vocab_size=49152, d_model=576, n_layers=1, n_heads=9, n_kv_heads=3, head_dim=64, ffn_dim=1536)


def layout(rows: int) -> tuple[np.ndarray, np.ndarray]:
  """segment, member [R, 7168 / R]: the groups spread evenly over the rows, each prompt then its completions."""
  s, per = POSITIONS // rows, len(PROMPTS) // rows
  if len(PROMPTS) % rows or any(sum(PROMPTS[r * per:(r + 1) * per]) + per * GROUP * NEW > s for r in range(rows)):
    raise ValueError(f"the 8 groups do not fill {rows} rows of {s} positions evenly.")
  seg, mem = np.zeros((rows, s), np.int32), np.zeros((rows, s), np.int32)
  for r in range(rows):
    at = 0
    for j, l in enumerate(PROMPTS[r * per:(r + 1) * per]):
      seg[r, at:at + l + GROUP * NEW] = j + 1
      for g in range(GROUP):
        mem[r, at + l + g * NEW:at + l + (g + 1) * NEW] = g + 1
      at += l + GROUP * NEW
  return seg, mem


def seconds(rows: int, gathered: bool, chunk: int, calls: int) -> float:
  seg, mem = (jnp.asarray(x) for x in layout(rows))
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
  s = POSITIONS // rows
  q = jax.random.normal(kq, (rows, s, 9, 64))
  k, v = jax.random.normal(kk, (rows, s, 3, 64)), jax.random.normal(kv, (rows, s, 3, 64))
  loss = lambda q, k, v: jnp.sum(grouped_attention(q, k, v, seg, mem, PROMPT_WINDOW, NEW, CFG, chunk=chunk,
                                                   gathered=gathered) ** 2)
  fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  jax.block_until_ready(fn(q, k, v))
  times = []
  for _ in range(calls):
    t0 = time.process_time()
    jax.block_until_ready(fn(q, k, v))
    times.append(time.process_time() - t0)
  return float(np.median(times))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", default="4,1", help="comma-separated row counts R: 1, 2 or 4")
  ap.add_argument("--calls", type=int, default=3)
  args = ap.parse_args(argv)
  rows = [int(r) for r in args.rows.split(",")]
  if args.calls < 1 or any(r not in (1, 2, 4) for r in rows):
    ap.error("--calls must be >= 1 and every row count 1, 2 or 4")
  print(f"{cpu_model()}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load average "
        f"{os.getloadavg()[0]:.2f}; one layer's attention, forward + backward, CPU s (median of {args.calls})\n")
  print("| rows x positions | sliced, C = 32 | sliced, C = 64 | gathered, C = 32 | gathered, C = 64 |")
  print("|---|---|---|---|---|")
  for r in rows:
    cells = [seconds(r, gathered, c, args.calls) for gathered in (False, True) for c in (32, 64)]
    print(f"| {r} x {POSITIONS // r} | " + " | ".join(f"{t:.3f}" for t in cells) + " |", flush=True)


if __name__ == "__main__":
  main()
