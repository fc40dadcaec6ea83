"""Decode step and sampling workload of SmolLM2-135M-Instruct on this machine, ratios side by side in one process.

Table 1, one decode step at batch B (prompt P, attention over P + N/2 slots, the middle of an N-token run):
  floor   = 2·params·B FLOPs at the rate of a 2048³ float32 matmul measured in the same process;
  before  = the previous step (stacked layer scan over the whole preallocated cache, Gumbel noise and a
            log-softmax over the full vocabulary);
  now     = `rl_jax.decode.decode_step` + `rl_jax.sampling.sample_tokens` (T = 1, greedy, T = 0.6 / top-p 0.95).
Table 2, the GSM8K sampling workload (chat-templated test questions, N new tokens, stop at EOS): useful tokens/s
(tokens up to and including the stop) of transformers' `generate`, rl_jax's static sampler (one prefill per
prompt) and the continuous-batching sampler (`slots` rows, refilled as rows finish).

Wall times are minima over repeats; CPU seconds of this process are shown too, with the floor in CPU seconds:
on a shared machine run single-threaded (XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"), where CPU time does not count the time other processes hold the cores.

  python -m rl_jax.experiments.benchmarks.decode_bench [--batch=32] [--prompt=128] [--new-tokens=256] [--questions=32]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.chat import chat_text, encode_prompts
from rl_jax.decode import decode_cache_from, decode_step, decode_weights, grow_cache
from rl_jax.models import default_positions, forward_with_cache, init_cache, load_gguf, load_tokenizer, smollm2_gguf_path
from rl_jax.sampling import filter_logits, row_uniforms, sample_tokens

STEPS = 8


def best_time(fn, *args, repeats: int = 2) -> tuple[float, float]:
  """(min wall seconds, CPU seconds of that run) of fn(*args) after one warm-up call; fn returns its next args."""
  args = jax.block_until_ready(fn(*args))
  best = (float("inf"), 0.0)
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    args = jax.block_until_ready(fn(*args))
    best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
  return best


def matmul_rate() -> tuple[float, float]:
  """FLOP/s of a 2048³ float32 matmul: (per wall second, per CPU second of this process)."""
  a = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda a: (a @ a) / 2048.0)       # ones stay ones
  wall, cpu = best_time(lambda a: (mm(a),), a, repeats=5)
  return 2 * 2048 ** 3 / wall, 2 * 2048 ** 3 / cpu


def before_steps(params, cfg, p: int, n_new: int):
  """STEPS decode steps of the previous sampler: layer scan over the stacked cache of P + N slots (T = 1)."""
  def run(cache, key_valid, token, rng):
    def step(carry, i):
      cache, token, rng = carry
      rng, sub = jax.random.split(rng)
      logits, cache = forward_with_cache(params, token[:, None], cfg, cache, p + i, jnp.full((token.shape[0], 1), p + i),
                                         key_valid)
      filtered = filter_logits(logits[:, -1], temperature=1.0, top_k=0, top_p=1.0)
      token = jax.random.categorical(sub, filtered, axis=-1).astype(jnp.int32)
      logp = jnp.take_along_axis(jax.nn.log_softmax(filtered, -1), token[:, None], -1)
      return (cache, token, rng), logp
    (cache, token, rng), _ = jax.lax.scan(step, (cache, token, rng), jnp.arange(n_new // 2, n_new // 2 + STEPS))
    return cache, key_valid, token, rng
  return jax.jit(run, donate_argnums=0)


def now_steps(params, cfg, p: int, n_new: int, **sampling):
  """STEPS decode steps of `decode_step` + `sample_tokens` with the cache holding P + N/2 (+ STEPS) slots."""
  w = decode_weights(params, cfg)

  def run(cache, key_valid, token, keys):
    def step(carry, i):
      cache, token = carry
      logits, cache = decode_step(w, cfg, cache, token, jnp.full(token.shape, p + i), p + i, key_valid)
      token, logp = sample_tokens(logits, row_uniforms(keys, i), **sampling)
      return (cache, token), logp
    (cache, token), _ = jax.lax.scan(step, (cache, token), jnp.arange(n_new // 2, n_new // 2 + STEPS))
    return cache, key_valid, token, keys
  return jax.jit(run, donate_argnums=0)


def prompt_cache(params, cfg, tok, batch: int, p: int, n_new: int):
  """A real chat prompt (P tokens, left-padded) prefilled for every row, as the stacked cache of P + N slots, so
  the timed steps see the model's real (peaked) next-token distributions."""
  text = chat_text(tok, "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                        "in May. How many clips did Natalia sell altogether in April and May?")
  ids, mask = encode_prompts(tok, [text] * batch, bucket=p, max_len=p)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  key_valid = jnp.pad(mask, ((0, 0), (0, n_new)))       # the new slots are masked: only the prompt is attended
  logits, cache = jax.jit(lambda: forward_with_cache(params, ids, cfg, init_cache(cfg, batch, p + n_new), 0,
                                                     default_positions(mask), key_valid, last_only=True))()
  return cache, key_valid, jnp.argmax(logits[:, -1], -1).astype(jnp.int32)


def decode_table(params, cfg, tok, batch: int, p: int, n_new: int):
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rate, cpu_rate = matmul_rate()
  floor, cpu_floor = 2 * n_params * batch / rate, 2 * n_params * batch / cpu_rate
  s_now = p + n_new // 2 + STEPS
  cache, key_valid, token = prompt_cache(params, cfg, tok, batch, p, n_new)
  kv_now = key_valid[:, :s_now].astype(bool)
  mk_now = lambda dtype: jax.tree.map(lambda a: a.astype(dtype), grow_cache(decode_cache_from(
      jax.tree.map(lambda a: a[:, :, :s_now], cache)), s_now))
  keys = jax.random.split(jax.random.PRNGKey(0), batch)
  rows = [("before (T = 1)", before_steps(params, cfg, p, n_new),
           (jax.tree.map(jnp.copy, cache), key_valid, token, jax.random.PRNGKey(0)))]
  for name, kw, dtype in [("now, T = 1", dict(temperature=1.0), jnp.float32),
                          ("now, greedy", dict(temperature=0.0), jnp.float32),
                          ("now, T = 0.6, top-p 0.95", dict(temperature=0.6, top_p=0.95), jnp.float32),
                          ("now, T = 1, bfloat16 weights/KV", dict(temperature=1.0), jnp.bfloat16)]:
    cast = jax.tree.map(lambda a: a.astype(dtype), params)
    rows.append((name, now_steps(cast, cfg, p, n_new, **kw), (mk_now(dtype), kv_now, token, keys)))
  print(f"\nDecode step, batch {batch}, prompt {p}, attention over {p + n_new // 2} slots (mid-run of {n_new} new "
        f"tokens); floor = 2·{n_params / 1e6:.1f}M·{batch} FLOPs at {rate / 1e9:.0f} GFLOP/s (2048³ matmul) = "
        f"{floor * 1e3:.1f} ms (CPU time: {cpu_rate / 1e9:.0f} GFLOP/CPU-s, {cpu_floor * 1e3:.1f} CPU ms)")
  print("| step | ms / step | × floor | CPU ms / step | × CPU floor |")
  print("|---|---|---|---|---|")
  for name, fn, args in rows:
    wall, cpu = best_time(fn, *args)
    print(f"| {name} | {wall / STEPS * 1e3:.1f} | {wall / STEPS / floor:.2f} | {cpu / STEPS * 1e3:.1f} | "
          f"{cpu / STEPS / cpu_floor:.2f} |", flush=True)
    del fn, args


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--prompt", type=int, default=128)
  ap.add_argument("--new-tokens", type=int, default=256)
  ap.add_argument("--questions", type=int, default=0, help="GSM8K workload size (0: skip table 2)")
  ap.add_argument("--slots", type=int, default=16)
  args = ap.parse_args(argv)
  from rl_jax.machine import describe
  print(describe())
  path = smollm2_gguf_path()
  params, cfg = load_gguf(path)
  params = jax.tree.map(jnp.asarray, params)
  tok = load_tokenizer(path)
  decode_table(params, cfg, tok, args.batch, args.prompt, args.new_tokens)
  if args.questions:
    from rl_jax.experiments.benchmarks.decode_workload import workload_table
    workload_table(params, cfg, tok, path, args.questions, args.new_tokens, args.slots)


if __name__ == "__main__":
  main()
