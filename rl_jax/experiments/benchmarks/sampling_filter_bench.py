"""Time of one decode step's nucleus (top-p) filter: rl_jax's top-k-candidate search vs a full vocabulary sort.

`rl_jax.sampling.nucleus_threshold` looks for the nucleus among the 256 largest logits (exact when
the nucleus ends there, which is the case for the peaked distributions a trained LM samples from at
temperature ≤ 1) and falls back to the full sort otherwise. Rows: batch B, vocabulary V, and a
logit scale: "peaked" rows (normal × 8, nucleus of a few tokens) take the fast path, "flat" rows
(normal × 0.05) take the fallback. Median of `--repeats` jitted calls after a warm-up.

  python -m rl_jax.experiments.benchmarks.sampling_filter_bench [--quick] [--repeats=5]
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp

from rl_jax.experiments.benchmarks.timing import median_time
from rl_jax.sampling import nucleus_threshold
from rl_jax.machine import cpu_model

TOP_P = 0.95


def cases(quick: bool):
  if quick:
    return [(4, 4096, "peaked"), (4, 4096, "flat")]
  return [(8, 49152, "peaked"), (50, 49152, "peaked"), (50, 49152, "flat"), (256, 49152, "peaked")]


def run(quick: bool = False, repeats: int = 5) -> str:
  lines = ["| B | V | logits | nucleus size (max) | top-k candidates (ms) | full sort (ms) | speed-up |",
           "|---|---|---|---|---|---|---|"]
  for b, v, kind in cases(quick):
    x = jax.random.normal(jax.random.PRNGKey(0), (b, v)) * (8.0 if kind == "peaked" else 0.05)
    fast = jax.jit(lambda l: nucleus_threshold(l, TOP_P))
    full = jax.jit(lambda l: nucleus_threshold(l, TOP_P, candidates=l.shape[-1]))
    same = bool(jnp.all(fast(x) == full(x)))
    if not same:
      raise RuntimeError(f"the two nucleus paths disagree at B={b}, V={v}, {kind}.")
    size = int(jnp.max(jnp.sum(x >= fast(x), axis=-1)))
    t_fast, t_full = median_time(fast, x, repeats=repeats), median_time(full, x, repeats=repeats)
    lines.append(f"| {b} | {v} | {kind} | {size} | {t_fast * 1e3:.2f} | {t_full * 1e3:.2f} | "
                 f"{t_full / t_fast:.1f}x |")
  lines.append("")
  lines.append(f"top_p = {TOP_P}; machine: {cpu_model()} ({platform.machine()}), jax {jax.__version__} "
               f"({jax.devices()[0].platform}); both paths give the same threshold on every row.")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="small vocabulary (seconds)")
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args(argv)
  print(run(args.quick, args.repeats))


if __name__ == "__main__":
  main()
