"""Decode step and sampling workload of SmolLM2-135M-Instruct on this machine, ratios side by side in one process.

Table 1, one decode step at batch B (prompt P, attention over P + N/2 slots, the middle of an N-token run):
  floor    = the larger of 2·params·B FLOPs at the rate of a 2048³ float32 matmul and the bytes the step must read
             (every weight once, plus the keys/values of the S slots it attends) at the read bandwidth of a
             256 MiB reduction, both measured in the same process;
  before   = the first sampler step (stacked layer scan over the whole preallocated cache, Gumbel noise and a
             log-softmax over the full vocabulary);
  previous = the decode step before fused output-major weights (`decode_previous`), T = 1;
  now      = `rl_jax.decode.decode_step` + `rl_jax.sampling.sample_tokens` (T = 1, greedy, T = 0.6 / top-p 0.95),
             with the projections and head through rl_jax's CPU packed-panel kernel (`rl_jax.kernels.cpu`, what the
             samplers use on one CPU device, with the attention over the cache in its CPU kernel) and, for
             comparison, through XLA's matmuls and XLA's attention (T = 1).
Every row takes its weights as an argument of the jitted steps (as the samplers, which build them inside their
jit; weights closed over as constants let XLA fold their layout changes at compile time and hold one copy per row),
donated with the cache and handed back: XLA copies an argument that is not donated into the scan's loop state on
every call (every weight, once per STEPS steps), while the samplers' weights are values of their own computation.
Each row is timed `--rounds` times, round robin over the rows, and reported as median [min–max] per step.
Table 2, the GSM8K sampling workload (chat-templated test questions, N new tokens, stop at EOS): useful tokens/s
(tokens up to and including the stop) of transformers' `generate`, rl_jax's static sampler (one prefill per
prompt; every row decoded until the last stops, and shrinking: finished rows dropped between buckets) and the
continuous-batching sampler (`slots` rows, refilled as rows finish).

CPU seconds of this process are shown next to wall seconds, with the floor in CPU seconds: on a shared machine
compare CPU seconds of a run pinned to one core, where CPU time does not count the time other processes hold it:
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" OMP_NUM_THREADS=1 taskset -c 1 python -m ...decode_bench
(the flag makes XLA's matmuls and the CPU kernels single-threaded; taskset keeps XLA's other intra-op work on the
same core. `intra_op_parallelism_threads` is not an XLA flag: inside XLA_FLAGS it stops XLA's flag parsing.)

  python -m rl_jax.experiments.benchmarks.decode_bench [--batch=32] [--prompt=128] [--new-tokens=256] [--rounds=3]
                                                        [--questions=32]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.chat import chat_text, encode_prompts
from rl_jax.decode import decode_cache_from, decode_step, decode_weights, grow_cache, resolve_cpu_kernels
from rl_jax.experiments.benchmarks.decode_previous import previous_decode_step, previous_weights
from rl_jax.machine import reexec_with_malloc_env
from rl_jax.models import default_positions, forward_with_cache, init_cache, load_gguf, load_tokenizer, smollm2_gguf_path
from rl_jax.sampling import filter_logits, row_uniforms, sample_tokens

STEPS = 8


def run_time(fn, args) -> tuple[float, float, tuple]:
  """(wall seconds, CPU seconds of this process, next args) of one call fn(*args); fn returns its next args."""
  w0, c0 = time.perf_counter(), time.process_time()
  args = jax.block_until_ready(fn(*args))
  return time.perf_counter() - w0, time.process_time() - c0, args


def best_time(fn, *args, repeats: int = 2) -> tuple[float, float]:
  """(min wall seconds, CPU seconds of that run) of fn(*args) after one warm-up call; fn returns its next args."""
  args = jax.block_until_ready(fn(*args))
  best = (float("inf"), 0.0)
  for _ in range(repeats):
    wall, cpu, args = run_time(fn, args)
    best = min(best, (wall, cpu))
  return best


def matmul_rate() -> tuple[float, float]:
  """FLOP/s of a 2048³ float32 matmul: (per wall second, per CPU second of this process), best of 5."""
  a = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda a: (a @ a) / 2048.0)       # ones stay ones
  wall, cpu = best_time(lambda a: (mm(a),), a, repeats=5)
  return 2 * 2048 ** 3 / wall, 2 * 2048 ** 3 / cpu


def read_bandwidth() -> tuple[float, float]:
  """Bytes/s read by a sum over 256 MiB of float32 (larger than the caches): (per wall second, per CPU second)."""
  a = jnp.full((64 << 20,), 1.0, jnp.float32)
  total = jax.jit(jnp.sum)
  wall, cpu = best_time(lambda a, _: (a, total(a)), a, None, repeats=5)   # the array is passed on, not copied
  return a.nbytes / wall, a.nbytes / cpu


def load_average() -> str:
  """The 1-minute load average of the machine (other processes sharing the cores)."""
  with open("/proc/loadavg") as f:
    return f.read().split()[0]


def before_steps(cfg, p: int, n_new: int):
  """STEPS decode steps of the previous sampler: layer scan over the stacked cache of P + N slots (T = 1);
  run(cache, key_valid, token, rng, params)."""
  def run(cache, key_valid, token, rng, params):
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
    return cache, key_valid, token, rng, params
  return jax.jit(run, donate_argnums=(0, 4))


def now_steps(cfg, p: int, n_new: int, step_fn=decode_step, step_kw=None, **sampling):
  """STEPS decode steps of `step_fn` (default `decode_step`) + `sample_tokens` with the cache holding P + N/2
  (+ STEPS) slots; run(cache, key_valid, token, keys, w) takes the decode weights as an argument, as the
  samplers do (they build them inside their jit), and rows that share weights hold one copy."""
  def run(cache, key_valid, token, keys, w):
    def step(carry, i):
      cache, token = carry
      logits, cache = step_fn(w, cfg, cache, token, jnp.full(token.shape, p + i), p + i, key_valid, **(step_kw or {}))
      token, logp = sample_tokens(logits, row_uniforms(keys, i), **sampling)
      return (cache, token), logp
    (cache, token), _ = jax.lax.scan(step, (cache, token), jnp.arange(n_new // 2, n_new // 2 + STEPS))
    return cache, key_valid, token, keys, w
  return jax.jit(run, donate_argnums=(0, 4))


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


def step_floor(params, batch: int, slots: int, cfg) -> dict:
  """The step's floors (wall and CPU seconds): max(2·params·B FLOPs / matmul rate, read bytes / read bandwidth),
  read bytes = every float32 weight once + the keys and values of `slots` cache slots per row."""
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rate, cpu_rate = matmul_rate()
  bw, cpu_bw = read_bandwidth()
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  kv_bytes = 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.head_dim * slots * 4
  flops, nbytes = 2 * n_params * batch, weight_bytes + kv_bytes
  return dict(n_params=n_params, rate=rate, cpu_rate=cpu_rate, bw=bw, cpu_bw=cpu_bw, weight_bytes=weight_bytes,
              kv_bytes=kv_bytes, wall=max(flops / rate, nbytes / bw), cpu=max(flops / cpu_rate, nbytes / cpu_bw),
              wall_parts=(flops / rate, nbytes / bw), cpu_parts=(flops / cpu_rate, nbytes / cpu_bw))


def _own(tree, taken: set):
  """`tree` with every leaf that is in `taken` (ids of arrays held elsewhere) or repeated within it replaced by a
  copy: a row donates its weights, so they may share no buffer with another row or with the parameters."""
  seen = set(taken)
  def one(a):
    if id(a) in seen:
      return jnp.copy(a)
    seen.add(id(a))
    return a
  return jax.tree.map(one, tree)


def decode_rows(params, cfg, tok, batch: int, p: int, n_new: int) -> list:
  """(name, jitted STEPS-step function, its first args) for each row of the decode table."""
  s_now = p + n_new // 2 + STEPS
  cache, key_valid, token = prompt_cache(params, cfg, tok, batch, p, n_new)
  kv_now = key_valid[:, :s_now].astype(bool)
  mk_now = lambda dtype: jax.tree.map(lambda a: a.astype(dtype), grow_cache(decode_cache_from(
      jax.tree.map(lambda a: a[:, :, :s_now], cache)), s_now))
  keys = jax.random.split(jax.random.PRNGKey(0), batch)
  params_ids = {id(a) for a in jax.tree.leaves(params)}
  rows = [("before (T = 1)", before_steps(cfg, p, n_new),
           (jax.tree.map(jnp.copy, cache), key_valid, token, jax.random.PRNGKey(0), jax.tree.map(jnp.copy, params))),
          ("previous (T = 1)", now_steps(cfg, p, n_new, previous_decode_step, temperature=1.0),
           (mk_now(jnp.float32), kv_now, token, keys, _own(previous_weights(params, cfg), params_ids)))]
  kernels = resolve_cpu_kernels(None, jax.devices()[:1])
  weights = {}
  xla_attention = dict(temperature=1.0, step_kw=dict(cpu_attention=False))
  for name, kw, dtype, on in [("now, T = 1, XLA matmuls", dict(temperature=1.0), jnp.float32, False),
                              ("now, T = 1, CPU matmul kernels, XLA attention", xla_attention, jnp.float32, kernels),
                              ("now, T = 1, CPU kernels", dict(temperature=1.0), jnp.float32, kernels),
                              ("now, greedy, CPU kernels", dict(temperature=0.0), jnp.float32, kernels),
                              ("now, T = 0.6, top-p 0.95, CPU kernels", dict(temperature=0.6, top_p=0.95),
                               jnp.float32, kernels),
                              ("now, T = 1, bfloat16 weights/KV (XLA)", dict(temperature=1.0), jnp.bfloat16, False)]:
    if (dtype, on) not in weights:
      weights[dtype, on] = _own(decode_weights(jax.tree.map(lambda a: a.astype(dtype), params), cfg, cpu_kernels=on),
                                params_ids)
    name += " (CPU kernels unavailable: XLA)" if "CPU" in name and not on else ""
    rows.append((name, now_steps(cfg, p, n_new, **kw),
                 (mk_now(dtype), kv_now, token, keys, weights[dtype, on])))
  return rows


def _call(fn, args: list, i: int, timed: bool):
  """Runs row i once; the weights it donated and handed back (its last argument) replace the donated ones in
  every row that shares them. (wall, CPU) seconds when timed."""
  donated = args[i][-1]
  wall, cpu, args[i] = run_time(fn, args[i]) if timed else (0.0, 0.0, jax.block_until_ready(fn(*args[i])))
  for j, a in enumerate(args):
    if a[-1] is donated:
      args[j] = (*a[:-1], args[i][-1])
  return wall, cpu


def time_rows(rows: list, rounds: int) -> list[tuple[list, list]]:
  """Per row, (wall seconds per step, CPU seconds per step) of `rounds` calls, round robin over the rows after
  one warm-up (compile) call each."""
  args = [a for _, _, a in rows]
  for i, (_, fn, _) in enumerate(rows):
    _call(fn, args, i, timed=False)
  times = [([], []) for _ in rows]
  for _ in range(rounds):
    for i, (_, fn, _) in enumerate(rows):
      wall, cpu = _call(fn, args, i, timed=True)
      times[i][0].append(wall / STEPS)
      times[i][1].append(cpu / STEPS)
  return times


def _stat(xs: list, unit: float) -> str:
  return f"{np.median(xs) * unit:.1f} [{min(xs) * unit:.1f}–{max(xs) * unit:.1f}]"


def decode_table(params, cfg, tok, batch: int, p: int, n_new: int, rounds: int = 3):
  s_now = p + n_new // 2 + STEPS
  load0 = load_average()
  f = step_floor(params, batch, s_now, cfg)
  rows = decode_rows(params, cfg, tok, batch, p, n_new)
  times = time_rows(rows, rounds)
  print(f"\nDecode step, batch {batch}, prompt {p}, attention over {s_now} slots (mid-run of {n_new} new tokens); "
        f"{STEPS} steps per call, {rounds} rounds; 1-min load average {load0} before, {load_average()} after")
  print(f"floor = max(2·{f['n_params'] / 1e6:.1f}M·{batch} FLOPs at {f['cpu_rate'] / 1e9:.0f} GFLOP/CPU-s "
        f"(2048³ matmul) = {f['cpu_parts'][0] * 1e3:.1f} CPU ms, {(f['weight_bytes'] + f['kv_bytes']) / 1e6:.0f} MB "
        f"(weights {f['weight_bytes'] / 1e6:.0f} + K/V {f['kv_bytes'] / 1e6:.0f}) at {f['cpu_bw'] / 1e9:.1f} GB/CPU-s "
        f"(256 MiB sum) = {f['cpu_parts'][1] * 1e3:.1f} CPU ms) = {f['cpu'] * 1e3:.1f} CPU ms; wall: "
        f"{f['rate'] / 1e9:.0f} GFLOP/s, {f['bw'] / 1e9:.1f} GB/s, floor {f['wall'] * 1e3:.1f} ms")
  print("| step | CPU ms / step, median [min–max] | × CPU floor | wall ms / step, median [min–max] | × wall floor |")
  print("|---|---|---|---|---|")
  print(f"| floor | {f['cpu'] * 1e3:.1f} | 1 | {f['wall'] * 1e3:.1f} | 1 |")
  for (name, _, _), (wall, cpu) in zip(rows, times):
    print(f"| {name} | {_stat(cpu, 1e3)} | {np.median(cpu) / f['cpu']:.2f} | {_stat(wall, 1e3)} | "
          f"{np.median(wall) / f['wall']:.2f} |", flush=True)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--prompt", type=int, default=128)
  ap.add_argument("--new-tokens", type=int, default=256)
  ap.add_argument("--questions", type=int, default=0, help="GSM8K workload size (0: skip table 2)")
  ap.add_argument("--slots", type=int, default=16)
  ap.add_argument("--rounds", type=int, default=3, help="timed calls per row of the decode table (0: skip table 1)")
  args = ap.parse_args(argv)
  from rl_jax.machine import describe
  print(describe())
  path = smollm2_gguf_path()
  params, cfg = load_gguf(path)
  params = jax.tree.map(jnp.asarray, params)
  tok = load_tokenizer(path)
  if args.rounds:
    decode_table(params, cfg, tok, args.batch, args.prompt, args.new_tokens, args.rounds)
  if args.questions:
    from rl_jax.experiments.benchmarks.decode_workload import workload_table
    workload_table(params, cfg, tok, path, args.questions, args.new_tokens, args.slots)


if __name__ == "__main__":
  reexec_with_malloc_env("rl_jax.experiments.benchmarks.decode_bench")   # glibc settings for XLA's per-call buffers
  main()
