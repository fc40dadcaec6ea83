"""Kernel benchmark: time and memory of each Pallas kernel vs its jnp reference (and the naive path).

  python -m rl_jax.experiments.benchmarks.kernels_bench [--quick]

On CPU the kernels would run in the interpreter, so only the XLA paths are timed there; on a GPU/TPU
the compiled kernels are timed too, with the achieved memory bandwidth (bytes the op must move /
time) against a measured device-to-device copy ceiling. Memory is XLA's compiled estimate
(`memory_analysis()`: temporaries + outputs + arguments).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.experiments.benchmarks.timing import median_time


def peak_bytes(fn, *args):
  try:
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes)
  except Exception:  # some backends do not report
    return -1


def copy_bandwidth(n_bytes=1 << 28):
  x = jnp.ones((n_bytes // 4,), jnp.float32)
  f = jax.jit(lambda x: x + 1.0)
  t = median_time(f, x, repeats=5)
  return 2 * n_bytes / t  # read + write


def bench_ratio_clip(shapes, accelerator):
  from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
  rows = []
  for b, t in shapes:
    rng = np.random.default_rng(0)
    lp = jnp.asarray(rng.normal(-1, 0.3, (b, t)), jnp.float32)
    old = lp + 0.1
    adv = jnp.asarray(np.repeat(rng.normal(size=(b, 1)), t, 1), jnp.float32)
    mask = jnp.ones((b, t), jnp.float32)
    for impl in (["pallas"] if accelerator else []) + ["reference"]:
      def f(lp, impl=impl):
        return jax.value_and_grad(lambda x: ratio_clip_loss(x, old, adv, mask, eps_high=0.28, impl=impl)[0].sum())(lp)
      jf = jax.jit(f)
      sec = median_time(jf, lp, repeats=10)
      moved = 4 * b * t * (4 + 1)  # forward reads 4 arrays; backward reads 5, writes 1 (lower bound ≈ 5 passes)
      rows.append(("ratio_clip fwd+bwd", f"B={b} T={t}", impl, sec * 1e3, peak_bytes(f, lp), moved / sec))
  return rows


def bench_logprobs(shapes, accelerator):
  from rl_jax.logprobs import logprobs_from_hidden
  rows = []
  for n, d, v in shapes:
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(n, d)) * 0.1, jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)) * 0.1, jnp.float32)
    tgt = jnp.asarray(rng.integers(0, v, n), jnp.int32)

    def naive(h, w):
      logz = jax.nn.log_softmax(h @ w, -1)
      return jnp.take_along_axis(logz, tgt[:, None], 1)[:, 0].sum()

    def chunked(h, w):
      return logprobs_from_hidden(h, w, tgt, vocab_chunk=4096)[0].sum()

    paths = [("naive full logits", naive), ("chunked jnp (reference)", chunked)]
    try:
      from rl_jax.kernels.fused_logprobs.ops import fused_logprobs
      if accelerator:
        paths.append(("fused kernel", lambda h, w: fused_logprobs(h, w, tgt, impl="pallas")[0].sum()))
    except ImportError:
      pass
    for name, fn in paths:
      g = jax.value_and_grad(fn, argnums=(0, 1))
      sec = median_time(jax.jit(g), h, w, repeats=3)
      rows.append(("logprobs fwd+bwd", f"N={n} D={d} V={v}", name, sec * 1e3, peak_bytes(g, h, w), float("nan")))
    if not accelerator:   # the kernel's buffers, from compiling (not running) its interpret-mode lowering
      from rl_jax.kernels.fused_logprobs.ops import fused_logprobs
      g = jax.value_and_grad(lambda h, w: fused_logprobs(h, w, tgt, impl="interpret")[0].sum(), argnums=(0, 1))
      rows.append(("logprobs fwd+bwd", f"N={n} D={d} V={v}", "fused kernel (interpret: memory only)", float("nan"),
                   peak_bytes(g, h, w), float("nan")))
  return rows


def bench_tree_prefix(shapes, accelerator):
  """TEMPO prefix values: dense jnp (E [P, G, G, T]), scan jnp ([P, G, G] carry) and the kernel on GPU/TPU."""
  from rl_jax.kernels.tree_prefix.ops import tree_prefix_values
  from rl_jax.kernels.tree_prefix.reference import next_values_scan
  rows = []
  for p, g, t in shapes:
    rng = np.random.default_rng(0)
    tok = jnp.asarray(rng.integers(0, 2, (p, g, t)), jnp.int32)  # small alphabet: shared prefixes
    mask = jnp.ones((p, g, t), jnp.float32)
    r = jnp.asarray(rng.normal(size=(p, g)), jnp.float32)
    paths = [("dense jnp E[P,G,G,T] (reference)", lambda *a: tree_prefix_values(*a, impl="reference")[1]),
             ("scan jnp carry[P,G,G]", next_values_scan)]
    if accelerator:
      paths.append(("pallas", lambda *a: tree_prefix_values(*a, impl="pallas")[1]))
    for name, fn in paths:
      sec = median_time(jax.jit(fn), tok, mask, r, repeats=5)
      rows.append(("tree_prefix values", f"P={p} G={g} T={t}", name, sec * 1e3, peak_bytes(fn, tok, mask, r),
                   float("nan")))
  return rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  accelerator = jax.default_backend() in ("gpu", "tpu")
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  ceiling = copy_bandwidth()
  print(f"measured copy bandwidth ceiling: {ceiling / 1e9:.0f} GB/s")
  rc_shapes = [(32, 1024), (256, 4096)] if not args.quick else [(8, 256)]
  lp_shapes = [(2048, 576, 49152)] if not args.quick else [(256, 64, 4096)]
  tp_shapes = [(64, 16, 1024), (64, 16, 4096)] if not args.quick else [(8, 8, 256)]
  rows = (bench_ratio_clip(rc_shapes, accelerator) + bench_logprobs(lp_shapes, accelerator)
          + bench_tree_prefix(tp_shapes, accelerator))
  print(f"| op | shape | path | time (ms) | peak memory (MiB) | bandwidth (% of ceiling) |")
  print("|---|---|---|---|---|---|")
  for op, shape, path, ms, mem, bw in rows:
    bw_s = f"{100 * bw / ceiling:.0f}%" if np.isfinite(bw) else "-"
    mem_s = f"{mem / 2**20:.1f}" if mem >= 0 else "n/a"
    ms_s = f"{ms:.3f}" if np.isfinite(ms) else "n/a"
    print(f"| {op} | {shape} | {path} | {ms_s} | {mem_s} | {bw_s} |")


if __name__ == "__main__":
  main()
