"""Ahead-of-time compilation of an RL run for a TPU slice, on a host without one.

libtpu's compiler runs deviceless: `jax.experimental.topologies.get_topology_desc` gives the devices of any
slice, and `jax.jit(f).lower(<ShapeDtypeStruct with NamedSharding>).compile()` runs the real TPU compiler
(XLA TPU, Mosaic for Pallas). `memory_analysis()` then reports per-chip argument / output / temporary bytes,
so whether a run fits is known before a slice exists. No weights are needed: parameters and optimizer state
are abstract (`jax.eval_shape`) and laid out by rl_jax.sharding's partition rules on the slice's mesh.

  report = aot_report("v5p-64", build, RunShapes(sample_rows=1024, prompt_len=1024, new_tokens=3072, train_rows=256, ...))

where `build(devices, micro_batches, logprob_micro_batches)` returns the run's `rl_jax.loop.Run` on those devices:
what is compiled is the run's own sampler, log-prob forward and train step (`rl_jax.loop.ahead_of_time` does
this for every experiment's `--aot=TOPOLOGY`).

Per function: peak = arguments + outputs + temporaries − aliased bytes (outputs written into donated arguments:
the run's train step donates its state, so parameters and optimizer state count once); `fits` when every peak plus
the resident state the function does not take as an argument (parameters, optimizer state, reference) is
≤ 90% of the chip's HBM. `estimate` is an analytic roofline (XLA's cost_analysis counts a scanned layer once).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from rl_jax.models.config import ModelConfig

GIB = 2 ** 30
HBM_FRACTION = 0.9     # a function fits when its peak (with the resident state) is at most this share of HBM


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures of a TPU generation (Google Cloud TPU system architecture pages)."""
  name: str
  hbm_gib: float            # HBM per chip
  peak_flops: float         # dense bfloat16 FLOP/s per chip
  hbm_bytes_per_s: float    # HBM bandwidth per chip
  cores_per_chip: int       # TensorCores counted by the slice name (v5p-64 = 64 cores = 32 chips)
  torus_dims: int           # 3-D (v4, v5p) or 2-D (v5e, v6e) chip topology


CHIPS = {
    "v4": Chip("v4", 32.0, 275e12, 1.228e12, 2, 3),
    "v5e": Chip("v5e", 16.0, 197e12, 0.819e12, 1, 2),
    "v5p": Chip("v5p", 95.0, 459e12, 2.765e12, 2, 3),
    "v6e": Chip("v6e", 32.0, 918e12, 1.640e12, 1, 2),
}
SLICE_ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
  """Standard slice shape for a chip count: double the smallest axis (the last on ties), and a 3-D shape with
  a unit axis puts it last: v5p-8 (4 chips) → 2×2×1, v5p-64 (32 chips) → 2×4×4, v6e-8 → 2×4, v6e-64 → 8×8."""
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"a TPU slice has a power-of-two number of chips, got {chips}.")
  shape = [1] * dims
  while math.prod(shape) < chips:
    small = min(shape)
    i = max(j for j, s in enumerate(shape) if s == small)
    shape[i] *= 2
  return tuple(reversed(shape)) if dims == 3 and 1 in shape else tuple(shape)


def parse_topology(name: str) -> tuple[Chip, str, int]:
  """(chip, JAX topology name, chips) from a slice name ("v5p-64", "v6e-16", "v5litepod-8") or a JAX
  topology name ("v5p:2x4x4")."""
  m = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", name)
  if m:
    kind, dims = SLICE_ALIASES.get(m.group(1), m.group(1)), tuple(int(d) for d in m.group(2).split("x"))
    if kind not in CHIPS:
      raise ValueError(f"unknown TPU generation {kind!r} in {name!r}; known: {sorted(CHIPS)}.")
    return CHIPS[kind], f"{kind}:{m.group(2)}", math.prod(dims)
  m = re.fullmatch(r"(v\w+?)-(\d+)", name)
  if not m:
    raise ValueError(f"not a TPU slice name ('v5p-64', 'v6e-16') or topology ('v5p:2x4x4'): {name!r}.")
  kind = SLICE_ALIASES.get(m.group(1), m.group(1))
  if kind not in CHIPS:
    raise ValueError(f"unknown TPU generation {kind!r} in {name!r}; known: {sorted(CHIPS)}.")
  chip, cores = CHIPS[kind], int(m.group(2))
  if cores % chip.cores_per_chip:
    raise ValueError(f"{name}: {kind} counts {chip.cores_per_chip} cores per chip.")
  chips = cores // chip.cores_per_chip
  return chip, f"{kind}:" + "x".join(map(str, torus_shape(chips, chip.torus_dims))), chips


def topology_devices(jax_topology: str) -> list:
  """The devices of a TPU slice, on any host (libtpu, deviceless)."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")          # no GCE metadata server here
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other jax processes on the host may hold libtpu's lockfile
  from jax.experimental import topologies
  return list(topologies.get_topology_desc(platform="tpu", topology_name=jax_topology).devices)


def versions() -> dict:
  from importlib import metadata
  out = {"jax": jax.__version__}
  try:
    out["libtpu"] = metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    out["libtpu"] = None
  return out


def per_chip_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs that carry shardings."""
  def one(x):
    shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    return math.prod(shard) * jnp.dtype(x.dtype).itemsize
  return int(sum(one(x) for x in jax.tree.leaves(tree)))


def with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def compile_memory(fn, *args) -> dict:
  """Compiles `fn` for the abstract `args` and returns its per-chip memory (GiB) and compile time.

  peak = arguments + outputs + temporaries − aliased (outputs written into donated arguments)."""
  t0 = time.perf_counter()
  mesh = next(x.sharding.mesh for x in jax.tree.leaves(args) if isinstance(x.sharding, NamedSharding))
  with jax.set_mesh(mesh):    # as the run traces it (rl_jax.loop.Run): activations pinned to the batch axes
    ma = fn.lower(*args).compile().memory_analysis()
  arg, out, tmp, alias = (ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes,
                          ma.alias_size_in_bytes)
  return {"argument_gib": arg / GIB, "output_gib": out / GIB, "temp_gib": tmp / GIB, "alias_gib": alias / GIB,
          "peak_gib": (arg + out + tmp - alias) / GIB, "compile_seconds": time.perf_counter() - t0}


@dataclasses.dataclass(frozen=True)
class RunShapes:
  """The shapes one RL step of a run hands its jitted functions."""
  sample_rows: int              # rows per sampler call (prompts × group size)
  prompt_len: int               # padded prompt length
  new_tokens: int               # tokens sampled per row (KV cache = prompt_len + new_tokens)
  train_rows: int               # rows per optimizer update (one mini-batch)
  logprob_rows: int             # rows per old / reference log-prob call
  group_size: int = 1           # samples per prompt: each prompt is prefilled once for its group
  micro_batches: int = 1        # micro-batches of one update (gradient accumulation)
  logprob_micro_batches: int = 1
  old_logp: bool = True         # a no-gradient π_old pass runs (several updates per rollout batch)
  reference: bool = False       # a frozen reference model is resident and run (β > 0)
  updates: int = 1              # optimizer updates per RL step (epochs × mini-batches)
  decode_block: int = 64        # the sampler's cache growth step (rl_jax.sampling.generate)
  temperature: float = 1.0      # sampling settings (top-p < 1 compiles the nucleus path)
  top_p: float = 1.0
  token_advantages: bool = False   # advantages per token [B, T] (TEMPO) rather than per row [B]
  rollout: str = "group"        # "tree": TreePO tree rollouts (new_tokens = depth × segment length)


def run_shapes(cfg, *, prompt_len: int, new_tokens: int, decode_block: int) -> RunShapes:
  """The shapes of one RL step of an `rl_jax.loop.RLConfig` run with prompts padded to `prompt_len` (micro-batch
  counts as configured: 0 = picked from compiled memory)."""
  from rl_jax.loop import TOKEN_ADVANTAGES
  rows = cfg.prompts_per_step * cfg.group_size
  rollout = getattr(cfg, "rollout", "group")
  if rollout == "tree":   # a tree's rows hold whole segments: depth ceil(new_tokens / segment) × segment
    new_tokens = -(-new_tokens // cfg.tree_segment_len) * cfg.tree_segment_len
  return RunShapes(sample_rows=rows, group_size=cfg.group_size, prompt_len=prompt_len, new_tokens=new_tokens,
                   train_rows=rows // cfg.minibatches, logprob_rows=rows, micro_batches=cfg.micro_batches,
                   logprob_micro_batches=cfg.logprob_micro_batches, old_logp=cfg.epochs * cfg.minibatches > 1,
                   reference=cfg.beta > 0, updates=cfg.epochs * cfg.minibatches, decode_block=decode_block,
                   temperature=cfg.temperature, top_p=cfg.top_p, token_advantages=cfg.advantage in TOKEN_ADVANTAGES,
                   rollout=rollout)


def _rows(run, shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=run.rows(shape[0], len(shape)))


def abstract_state(run):
  """The run's TrainState as ShapeDtypeStructs laid out by its shardings (no parameter is materialised)."""
  return with_shardings(run.abstract_state, run.state_sharding)


def sampler_call(run, shapes: RunShapes):
  """The run's sampler and its abstract arguments: the group sampler (prefill + KV-cache decode), or with
  --rollout=tree the TreePO tree sampler the loop runs instead (`rl_jax.loop.Run.tree_sampler`)."""
  n = shapes.sample_rows // shapes.group_size
  prompts = _rows(run, (n, shapes.prompt_len), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(run.mesh, P()))
  sampler = run.tree_sampler if shapes.rollout == "tree" else run.sampler
  return sampler(n, shapes.prompt_len), (abstract_state(run).params, prompts, prompts, key)


def packed_rows(run, shapes: RunShapes, n: int):
  """Abstract packed rows (rl_jax.packing.Packed) for `n` rows when the run packs (cfg.packed), else None: the
  longest layout the loop can hand over, every prompt full and every completion at the cap, n/G prompts and n
  completions in R rows (R = the row multiple of `Run.pack`), the attention windows P and T (as `pack_groups`)."""
  if not run.cfg.packed:
    return None
  from rl_jax.packing import ROW_FINE, Packed, round_up, span_limit, target_width
  p, t, g = shapes.prompt_len, shapes.new_tokens, shapes.group_size
  span = min(p + g * t, span_limit(p + t))                 # Run.pack splits longer groups
  parts = -(-(p + g * t) // span) if g > 1 else 1
  from rl_jax.loop import packed_row_multiple
  r = packed_row_multiple(run)
  s = round_up(max(span, -(-(-(-n // g) * parts * p + n * t) // r)), ROW_FINE)
  m = target_width(-(-n * t // r))
  tok, tgt = _rows(run, (r, s), jnp.int32), _rows(run, (r, m), jnp.int32)
  return Packed(tok, tok, tok, tok, tgt, tgt, tgt, prompt_window=min(p, s), completion_window=min(t, s))


def logprob_call(run, shapes: RunShapes):
  """The run's no-gradient log-prob forward (π_old or the reference) and its abstract arguments (whole groups)."""
  n = shapes.logprob_rows
  tokens = _rows(run, (n, shapes.prompt_len + shapes.new_tokens), jnp.int32)
  packed = packed_rows(run, shapes, n)
  extra = () if packed is None else (packed,)
  return run.logprob_jit(shapes.prompt_len, n, *extra), (abstract_state(run).params, tokens, tokens) + extra


def train_call(run, shapes: RunShapes):
  """The run's train step and its abstract arguments: the batch `rl_jax.train.rl_iteration` hands it."""
  from rl_jax.train import RLBatch
  b, t = shapes.train_rows, shapes.new_tokens
  tokens = _rows(run, (b, shapes.prompt_len + t), jnp.int32)
  per_token = _rows(run, (b, t), jnp.float32)
  adv = per_token if shapes.token_advantages else _rows(run, (b,), jnp.float32)
  batch = RLBatch(tokens, tokens, per_token, per_token if shapes.old_logp else None, adv,
                  per_token if shapes.reference else None, per_token, packed_rows(run, shapes, b))
  return run.train_jit(shapes.prompt_len, batch), (abstract_state(run), batch)


def matmul_params(model: ModelConfig) -> int:
  """Weights that multiply every token: the decoder layers and the output projection (not the embedding gather)."""
  q, kv, d, f = model.n_heads * model.head_dim, model.n_kv_heads * model.head_dim, model.d_model, model.ffn_dim
  return model.n_layers * (d * (q + 2 * kv) + q * d + 3 * d * f) + d * model.vocab_size


def attention_flops(model: ModelConfig, queries: int, context: float) -> float:
  """2 · 2 · L · H · hd · (keys seen) per query: q·kᵀ and p·v."""
  return 4.0 * model.n_layers * model.n_heads * model.head_dim * queries * context


def remat_flops(model: ModelConfig, s: int, fwd_seq: float) -> float:
  """FLOPs the backward recomputes per row of s tokens: the whole forward fwd_seq with remat "full", its attention
  only with "dots" (the projection outputs are kept), nothing without remat."""
  if not model.remat:
    return 0.0
  return fwd_seq if model.remat_policy == "full" else attention_flops(model, s, s / 2)


def roofline(model: ModelConfig, run: RunShapes, chip: Chip, chips: int, tensor: int) -> dict:
  """Analytic time of one RL step at the chip's peak FLOP/s and HBM bandwidth (a lower bound on time).

  Forward = 2·N·tokens + attention, training = 3× forward, + what remat recomputes (`remat_flops`), +1 forward
  with gradient accumulation (its log-prob pass). Decoding is max(compute, memory) per step, memory = the
  compute-dtype weights a chip streams (its tensor shard, FSDP-gathered) + its rows' KV cache at the mean context length.
  MFU = (6·N per trained token + 2·N per sampled / scored token, + attention) / (time · chips · peak).
  """
  n, p, t = matmul_params(model), run.prompt_len, run.new_tokens
  s = p + t
  flops_s = chips * chip.peak_flops
  itemsize = jnp.dtype(model.dtype).itemsize
  fwd_seq = 2.0 * n * s + attention_flops(model, s, s / 2)          # one row, full sequence (causal)
  prefill = run.sample_rows * (2.0 * n * p + attention_flops(model, p, p / 2))
  mean_ctx = p + t / 2
  decode_flops = run.sample_rows * t * (2.0 * n + attention_flops(model, 1, mean_ctx))
  rows_per_chip = run.sample_rows * tensor / chips
  kv_per_chip = rows_per_chip * mean_ctx * 2 * model.n_layers * model.n_kv_heads * model.head_dim * itemsize / tensor
  decode_bytes = t * (n * itemsize / tensor + kv_per_chip)
  decode_s = max(decode_flops / flops_s, decode_bytes / chip.hbm_bytes_per_s)
  forward_passes = run.logprob_rows * (int(run.old_logp) + int(run.reference)) * fwd_seq
  recompute = remat_flops(model, s, fwd_seq)
  train = run.updates * run.train_rows * ((3 + int(run.micro_batches > 1)) * fwd_seq + recompute)
  seconds = prefill / flops_s + decode_s + (forward_passes + train) / flops_s
  useful = prefill + decode_flops + forward_passes + run.updates * run.train_rows * 3 * fwd_seq
  return {"step_seconds": seconds, "tokens_per_second": run.sample_rows * t / seconds,
          "mfu": useful / (seconds * flops_s), "sample_seconds": prefill / flops_s + decode_s,
          "decode_bound": "memory" if decode_bytes / chip.hbm_bytes_per_s > decode_flops / flops_s else "compute",
          "train_seconds": (forward_passes + train) / flops_s,
          "peak_flops_per_chip": chip.peak_flops, "hbm_bytes_per_s_per_chip": chip.hbm_bytes_per_s}


def fits(peak_gib: float, resident_gib: float, chip: Chip) -> bool:
  return peak_gib + resident_gib <= HBM_FRACTION * chip.hbm_gib


def _entry(mem: dict, resident_other: float, chip: Chip, **extra) -> dict:
  return dict(mem, resident_other_gib=resident_other, total_gib=mem["peak_gib"] + resident_other,
              fits=fits(mem["peak_gib"], resident_other, chip), **extra)


def pick_micro_batches(build: Callable[[int], tuple], rows_per_shard: int, resident_other: float, chip: Chip,
                       log: Callable = print) -> tuple[int, dict]:
  """The fewest micro-batches (largest micro-batch) whose compiled peak fits, from compiled memory.

  `build(k)` returns (jitted fn, abstract args) for k micro-batches; k ranges over the divisors of the rows each
  batch shard holds. Compiles the smallest micro-batch and twice it, extrapolates the temporaries linearly in
  the micro-batch size, then compiles the predicted size (halving it until it fits). Raises ValueError naming
  the compiled sizes when even one row per shard does not fit.
  """
  sizes = [m for m in range(1, rows_per_shard + 1) if rows_per_shard % m == 0]   # rows per shard per micro-batch
  seen = {}

  def measure(m):
    if m not in seen:
      seen[m] = compile_memory(*_unpack(build(rows_per_shard // m)))
      log(f"  {rows_per_shard // m} micro-batches of {m} row(s)/shard: peak {seen[m]['peak_gib']:.2f} GiB "
          f"(+{resident_other:.2f} resident) [{seen[m]['compile_seconds']:.0f}s compile]")
    return seen[m]

  ok = lambda m: fits(measure(m)["peak_gib"], resident_other, chip)
  if not ok(sizes[0]):
    raise ValueError(f"does not fit {HBM_FRACTION:.0%} of {chip.hbm_gib} GiB even with 1 row per shard per "
                     f"micro-batch: compiled peaks {_sizes(seen, resident_other)}.")
  if len(sizes) == 1:
    return rows_per_shard, seen[sizes[0]]
  a, b = measure(sizes[0])["peak_gib"], measure(sizes[1])["peak_gib"]
  slope = max((b - a) / (sizes[1] - sizes[0]), 1e-9)
  budget = HBM_FRACTION * chip.hbm_gib - resident_other
  guess = [m for m in sizes if a + slope * (m - sizes[0]) <= budget] or sizes[:1]
  i = sizes.index(guess[-1])
  while i > 0 and not ok(sizes[i]):
    i -= 1
  return rows_per_shard // sizes[i], seen[sizes[i]]


def _unpack(built):
  fn, args = built
  return (fn, *args)


def _sizes(seen: dict, resident: float) -> str:
  return ", ".join(f"{m} row(s)/shard: {v['peak_gib'] + resident:.1f} GiB" for m, v in sorted(seen.items()))


def resident_gib(run, reference: bool) -> dict:
  """Per-chip GiB of what stays resident between the run's functions: parameters, optimizer state, reference."""
  state = abstract_state(run)
  params, opt = per_chip_bytes(state.params) / GIB, per_chip_bytes(state.opt_state) / GIB
  return {"params_gib": params, "opt_state_gib": opt, "reference_gib": params if reference else 0.0}


def batch_shards(run, shapes: RunShapes) -> int:
  """data × fsdp of the run's mesh, after checking that every batch of `shapes` splits over them."""
  shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
  counts = {"prompts": shapes.sample_rows // shapes.group_size, "train_rows": shapes.train_rows,
            "logprob_rows": shapes.logprob_rows}
  for name, n in counts.items():
    if n % shards:
      raise ValueError(f"{name}={n} does not split over the {shards} batch shards of mesh {dict(run.mesh.shape)}.")
  return shards


def measure_updates(build: Callable[[int, int], object], shapes: RunShapes, chip: Chip, resident: dict, *,
                    log: Callable = print) -> tuple[dict, RunShapes]:
  """Compiled memory of the run's log-prob forward (when it runs one) and train step, and the shapes with their
  micro-batch counts: as given, or (a count of 0) the fewest that fit (`pick_micro_batches`).

  `build(micro_batches, logprob_micro_batches)` returns the run. Raises ValueError when no count fits."""
  shards = batch_shards(build(1, 1), shapes)
  params, total = resident["params_gib"], sum(resident.values())
  functions, k_lp = {}, shapes.logprob_micro_batches
  if shapes.old_logp or shapes.reference:
    make = lambda k: logprob_call(build(1, k), shapes)
    if k_lp == 0:
      k_lp, mem = pick_micro_batches(make, shapes.logprob_rows // shards, total - params, chip, log)
    else:
      mem = compile_memory(*_unpack(make(k_lp)))
    functions["logprobs"] = _entry(mem, total - params, chip, rows=shapes.logprob_rows, micro_batches=k_lp)
    log(f"  logprobs: peak {mem['peak_gib']:.2f} GiB, {k_lp} micro-batch(es)")
  k_tr, other = shapes.micro_batches, resident["reference_gib"]
  make = lambda k: train_call(build(k, 1), shapes)
  if k_tr == 0:
    k_tr, mem = pick_micro_batches(make, shapes.train_rows // shards, other, chip, log)
  else:
    mem = compile_memory(*_unpack(make(k_tr)))
  functions["train_step"] = _entry(mem, other, chip, rows=shapes.train_rows, micro_batches=k_tr)
  log(f"  train_step: peak {mem['peak_gib']:.2f} GiB, {k_tr} micro-batch(es)")
  return functions, dataclasses.replace(shapes, micro_batches=k_tr, logprob_micro_batches=max(k_lp, 1))


def aot_report(topology: str, build: Callable, shapes: RunShapes, *, log: Callable = print) -> dict:
  """Compiles the run's sampler, log-prob forward and train step for `topology` and reports per-chip memory.

  `build(devices, micro_batches, logprob_micro_batches)` returns the run (`rl_jax.loop.Run`) on the slice's
  devices; its mesh must use every chip. Micro-batch counts of 0 in `shapes` are picked from compiled memory.
  """
  chip, jax_topology, chips = parse_topology(topology)
  devices = topology_devices(jax_topology)
  on_slice = lambda k, k_lp: build(devices, k, k_lp)
  run = on_slice(1, 1)
  if run.mesh.size != chips:
    raise ValueError(f"--mesh={run.cfg.mesh} lays the run out over {run.mesh.size} of the {chips} chips of {topology}; "
                     "give a mesh that fills the slice (e.g. --mesh=1,-1,1: FSDP over every chip).")
  batch_shards(run, shapes)
  log(f"AOT {topology} ({jax_topology}, {chips} chips, {chip.hbm_gib} GiB HBM each), mesh {dict(run.mesh.shape)}")
  resident = resident_gib(run, shapes.reference)
  total, params = sum(resident.values()), resident["params_gib"]
  mem = compile_memory(*_unpack(sampler_call(run, shapes)))
  functions, error = {"sampler": _entry(mem, total - params, chip, rows=shapes.sample_rows,
                                        kv_cache_len=shapes.prompt_len + shapes.new_tokens)}, None
  log(f"  sampler ({shapes.rollout}): peak {mem['peak_gib']:.2f} GiB [{mem['compile_seconds']:.0f}s compile]")
  try:
    updates, shapes = measure_updates(on_slice, shapes, chip, resident, log=log)
    functions.update(updates)
  except ValueError as e:     # no micro-batch size fits: reported, with the compiled sizes
    error = str(e)
  shapes = dataclasses.replace(shapes, micro_batches=max(shapes.micro_batches, 1))
  return {"topology": topology, "jax_topology": jax_topology, "chip": chip.name, "chips": chips,
          "mesh": dict(run.mesh.shape), "packed": bool(getattr(run.cfg, "packed", False)), "hbm_gib": chip.hbm_gib,
          "hbm_fraction": HBM_FRACTION, "resident": resident,
          "functions": functions, "fits": error is None and all(f["fits"] for f in functions.values()),
          "error": error, "estimate": roofline(run.model_cfg, shapes, chip, chips, run.mesh.shape["tensor"]),
          "run": dataclasses.asdict(shapes), "model": dataclasses.asdict(run.model_cfg), "versions": versions()}


def device_chip(devices) -> Optional[Chip]:
  """The memory of the devices a run is on, as a Chip (HBM = the backend's per-device limit), or None when the
  backend reports no limit (CPU)."""
  stats = devices[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return Chip(devices[0].device_kind, limit / GIB, 0.0, 0.0, 1, 0) if limit else None


def pick_for_devices(build: Callable[[int, int], object], shapes: RunShapes, *, log: Callable = print
                     ) -> tuple[int, int]:
  """(micro_batches, logprob_micro_batches) of a run about to start on its devices: counts of 0 in `shapes` are
  picked from the compiled memory of the run's own functions on those devices, against their memory limit
  (as `aot_report` does for a slice). On a backend that reports no limit (CPU) a count of 0 becomes 1.
  Raises ValueError with the compiled sizes when none fits."""
  run = build(1, 1)
  chip = device_chip(run.mesh.devices.flat)
  if chip is None:
    log(f"micro-batches: {run.mesh.devices.flat[0].platform} reports no memory limit; auto counts are 1")
    return max(shapes.micro_batches, 1), max(shapes.logprob_micro_batches, 1)
  log(f"micro-batches: picking from compiled memory on {chip.name} ({chip.hbm_gib:.1f} GiB per device)")
  _, picked = measure_updates(build, shapes, chip, resident_gib(run, shapes.reference), log=log)
  return picked.micro_batches, picked.logprob_micro_batches


def format_report(report: dict) -> str:
  """Markdown table of a report (GiB per chip) and its roofline estimate."""
  layout = "packed" if report.get("packed") else "plain"
  lines = [f"{report['topology']} ({report['chips']} chips, mesh {report['mesh']}, {layout} rows, {report['hbm_gib']} GiB HBM/chip): "
           f"fits={str(report['fits']).lower()}",
           "| function | rows | micro-batches | arguments | outputs | temporaries | aliased | peak | + resident | total |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, f in report["functions"].items():
    lines.append(f"| {name} | {f['rows']} | {f.get('micro_batches', '-')} | {f['argument_gib']:.2f} | "
                 f"{f['output_gib']:.2f} | {f['temp_gib']:.2f} | {f['alias_gib']:.2f} | {f['peak_gib']:.2f} | "
                 f"{f['resident_other_gib']:.2f} | {f['total_gib']:.2f} |")
  e = report["estimate"]
  lines.append(f"roofline: {e['step_seconds']:.1f} s/step (sampling {e['sample_seconds']:.1f} s, {e['decode_bound']}-"
               f"bound decode; training {e['train_seconds']:.1f} s), {e['tokens_per_second']:.0f} sampled tokens/s, "
               f"MFU {e['mfu']:.2f} at {e['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s and "
               f"{e['hbm_bytes_per_s_per_chip'] / 1e12:.2f} TB/s per chip")
  if report.get("error"):
    lines.append(f"error: {report['error']}")
  return "\n".join(lines)
