"""The compiled side of an RL run (`rl_jax.loop`): `Run` holds everything a run compiles, built before any
compute — the device mesh, the optimizer, the objective and advantage estimator (checked), and the sampler
(group or tree rollouts), log-prob forward and train step jitted with explicit shardings from
`rl_jax.sharding` — plus `make_run` (micro-batch counts picked from compiled memory) and `ahead_of_time`
(--aot: the run compiled for a TPU slice, nothing run).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from rl_jax import loop_extras, objectives as objectives_lib, sharding
from rl_jax.decode import resolve_cpu_kernels
from rl_jax.distributed import is_main_process
from rl_jax.loop_config import MC_ADVANTAGES, Prompts, RLConfig, Task, advantage_kwargs, mesh_config, objective_kwargs
from rl_jax.metrics_log import atomic_write_text
from rl_jax.models.llama import sampler_dtype
from rl_jax.packing import pack_groups, span_limit
from rl_jax.sampling import DECODE_BLOCK, Samples, generate_raw, generate_shrinking
from rl_jax.train import RLBatch, Rollouts, TrainState, init_state, make_logprob_fn, make_rl_step
from rl_jax.tree_rollout import TreeRollout, first_width, tree_rollout_raw, tree_to_rollouts, tree_widths

def rl_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam with global-norm clipping 1.0."""
  return optax.chain(clip_global_norm(1.0), optax.adam(lr))


def clip_global_norm(max_norm: float) -> optax.GradientTransformation:
  """g · c / max(‖g‖₂, c) over the whole gradient tree (global-norm clipping, Pascanu et al., arXiv:1211.5063).

  `optax.clip_by_global_norm` up to rounding (the same state, so checkpoints carry over), with one scalar factor
  multiplied in instead of a per-element division: XLA then fuses the clip into Adam's moment updates rather
  than writing a clipped copy of the gradients (a parameter-sized buffer) first.
  """
  def update(updates, state, params=None):
    del params
    scale = max_norm / jnp.maximum(optax.tree.norm(updates), max_norm)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class Run:
  """Everything a run compiles, built before any compute (so it can also be compiled ahead of time).

  `params` may be abstract (jax.ShapeDtypeStruct leaves): only shapes decide the layout. The mesh is
  `cfg.mesh`; parameters, optimizer state and reference parameters are laid out by
  `rl_jax.sharding.state_shardings`, rollout rows over data × fsdp. `sampler`, `logprob_jit` and
  `train_jit` are jax.jit functions with explicit in/out shardings, one per input shape, traced and called
  under the run's mesh (`jax.set_mesh`: activations pinned to the batch axes). Micro-batch counts default to
  cfg's; a count of 0 (auto) is resolved first by `make_run`.
  """

  def __init__(self, cfg: RLConfig, model_cfg, params, task: Task, *, objective: Optional[Callable] = None,
               objective_kw: Optional[dict] = None, devices: Optional[Sequence] = None,
               micro_batches: Optional[int] = None, logprob_micro_batches: Optional[int] = None,
               decode_block: int = DECODE_BLOCK):
    self.cfg, self.model_cfg, self.task = cfg, model_cfg, task
    self.micro_batches = cfg.micro_batches if micro_batches is None else micro_batches
    self.logprob_micro_batches = cfg.logprob_micro_batches if logprob_micro_batches is None else logprob_micro_batches
    if not (self.micro_batches and self.logprob_micro_batches):
      raise ValueError("micro-batch counts of 0 (auto) are picked from compiled memory by loop.make_run.")
    self.decode_block = decode_block
    self.layouts = set()   # (R, S) of the packed layouts packed so far (`pack`)
    self.mesh = make_mesh(cfg.mesh, devices)
    self.optimizer = rl_optimizer(cfg.lr)
    self.objective = objective or objectives_lib.get(cfg.objective)
    self.objective_kw = dict(objective_kw or {}) if objective else objective_kwargs(cfg, task.max_new_tokens)
    self.advantage, self.advantage_kw = cfg.advantage, advantage_kwargs(cfg)
    self.extras = loop_extras.Extras(cfg, task)
    if cfg.advantage in MC_ADVANTAGES and not callable(getattr(task, "reward", None)):
      raise ValueError(f"advantage={cfg.advantage} scores Monte-Carlo continuations: the task needs a "
                       "reward(completion_ids, answer) method.")
    if cfg.rollout == "tree":
      tree_widths(group_size=cfg.group_size, branch_factor=2, **self.tree_shape())   # the tree reaches G leaves
    self.abstract_state = jax.eval_shape(lambda p: init_state(p, self.optimizer, jax.random.PRNGKey(0)), params)
    self.state_sharding = sharding.state_shardings(self.mesh, self.abstract_state, self.optimizer)
    self.param_sharding = self.state_sharding.params
    try:
      self._kw_key = tuple(sorted(self.objective_kw.items()))
      hash(self._kw_key)
    except TypeError:   # keywords holding arrays: this run's own compile
      self._kw_key = object()

  def call(self, fn: Callable, *args):
    """`fn(*args)` under the run's mesh (how its jitted functions are traced, here and ahead of time)."""
    with jax.set_mesh(self.mesh):
      return fn(*args)

  def rows(self, n: int, ndim: int = 2) -> NamedSharding:
    """Sharding of an array whose leading axis holds `n` rollout rows (data × fsdp when they divide)."""
    return NamedSharding(self.mesh, sharding.fit_spec(self.mesh, P(sharding.BATCH), (n,) + (1,) * (ndim - 1)))

  def place_state(self, state: TrainState) -> TrainState:
    """The state on the run's shardings, in buffers of its own: the train step donates them, and the parameters
    it was made from (or a reference placed from them) must stay valid. A jitted copy, since jax.device_put
    onto several devices reuses the source's buffer for one shard even with may_alias=False (jax 0.10)."""
    placed = jax.device_put(state, self.state_sharding)
    return jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=self.state_sharding)(placed)

  def place_params(self, params):
    return None if params is None else jax.device_put(params, self.param_sharding)

  def init_state(self, params, rng) -> TrainState:
    return self.place_state(init_state(params, self.optimizer, rng))

  def _cached(self, key, build):
    """One jitted function per key, shared by every Run of the same model and mesh (a grid of runs, or a
    test over many methods, compiles each function once)."""
    kind = key[0]
    sample = (self.cfg.temperature, self.cfg.top_p, self.cfg.group_size, self.task.max_new_tokens,
              tuple(self.task.stop_tokens))
    settings = {"sample": sample + (self.decode_block, self.cfg.temperature_tau),
                "tree": sample + (self.cfg.tree_segment_len,),
                "logp": (self.logprob_micro_batches,),
                "step": (self.cfg.lr, self.objective, self._kw_key, self.micro_batches)}[kind]
    full = (self.model_cfg, self.mesh, settings) + tuple(key)
    if full not in _COMPILED:
      _COMPILED[full] = build()
    return _COMPILED[full]

  def sampler(self, n: int, prompt_len: int) -> Callable:
    """Jitted (params, prompts [n, L], mask, rng) -> Samples [n·G, T] with the run's sampling settings: each
    prompt is prefilled once and its KV cache shared by its G = cfg.group_size rows (prompt i → rows
    i·G..i·G+G−1; row keys as for the n·G repeated prompts)."""
    g = self.cfg.group_size

    def build():
      tau = self.cfg.temperature_tau   # HAPO: a fifth argument, the entropy statistics [4]
      fn = lambda params, prompts, mask, rng, stats=None: generate_raw(
          params, self.model_cfg, prompts, mask, rng, **self.sampling_settings(stats))
      rows, out, one = self.rows(n), self.rows(n * g), NamedSharding(self.mesh, P())
      return sharding.jit_global(fn, in_shardings=(self.param_sharding, rows, rows, one) + ((one,) if tau else ()),
                                 out_shardings=Samples(out, out, out))
    return self._cached(("sample", n, prompt_len, g), build)

  def pack(self, tokens: np.ndarray, attn_mask: np.ndarray, prompt_len: int):
    """The rows in the packed layout (rl_jax.packing.pack_groups): R a multiple of lcm(micro-batch counts) ×
    the devices on the batch axes, so every micro-batch's rows spread over all of them; a group longer than
    4 plain rows is split in parts (so a row need not be longer than 4 plain rows). A layout this run has
    packed before is reused when barely larger than the best new one (`rl_jax.packing.choose_layout`'s known)."""
    multiple = packed_row_multiple(self)
    packed = pack_groups(tokens, attn_mask, prompt_len, rows_multiple=multiple, max_span=span_limit(tokens.shape[1]),
                         known=self.layouts)
    self.layouts.add(packed.tokens.shape)
    return packed

  def tree_shape(self) -> dict:
    """max_depth (segments to cover max_new_tokens) and first_width (the smallest power of two that reaches G
    leaves forking in 2) of the run's tree rollouts."""
    depth = -(-self.task.max_new_tokens // self.cfg.tree_segment_len)
    return {"max_depth": depth, "first_width": first_width(self.cfg.group_size, depth)}

  def tree_sampler(self, n: int, prompt_len: int) -> Callable:
    """Jitted (params, prompts [n, L], mask, rng) -> TreeRollout [n, G, D·segment]: TreePO tree rollouts
    (arXiv 2508.17445) of cfg.tree_segment_len-token segments, each unfinished node forking in 2 at the
    highest-entropy open nodes until the prompt holds G = cfg.group_size leaves."""
    t, cfg = self.task, self.cfg

    def build():
      fn = lambda params, prompts, mask, rng: tree_rollout_raw(
          params, self.model_cfg, prompts, mask, rng, group_size=cfg.group_size, segment_len=cfg.tree_segment_len,
          branch_factor=2, branch_by="entropy", temperature=cfg.temperature, top_p=cfg.top_p,
          stop_tokens=tuple(t.stop_tokens), **self.tree_shape())
      rows, leaves = self.rows(n), self.rows(n, 3)
      return sharding.jit_global(fn, in_shardings=(self.param_sharding, rows, rows, NamedSharding(self.mesh, P())),
                                 out_shardings=TreeRollout(leaves, leaves, leaves, leaves, rows))
    return self._cached(("tree", n, prompt_len, cfg.group_size), build)

  def logprob_jit(self, prompt_len: int, n: int, packed=None) -> Callable:
    """Jitted (params, tokens [n, L + T], attn[, packed]) -> completion log-probs [n, T]; with `packed` (the
    batch's Packed rows, arrays or ShapeDtypeStructs) computed on them (rl_jax.packing)."""
    raw = make_logprob_fn(self.model_cfg, prompt_len=prompt_len, micro_batches=self.logprob_micro_batches, jit=False,
                          packed=packed is not None)
    rows = self.rows(n)
    packed_sh = () if packed is None else (jax.tree.map(lambda x: self.rows(x.shape[0], len(x.shape)), packed),)
    return self._cached(("logp", prompt_len, n, layout_key(packed)), lambda: sharding.jit_global(
        raw, in_shardings=(self.param_sharding, rows, rows) + packed_sh, out_shardings=rows))

  def logprob_fn(self, prompt_len: int) -> Callable:
    """(params, tokens [B, L + T], attn[, packed rows]) -> completion log-probs [B, T], jitted per batch layout."""
    return lambda params, tokens, attn, *packed: self.call(
        self.logprob_jit(prompt_len, tokens.shape[0], *packed), params, tokens, attn, *packed)

  def train_jit(self, prompt_len: int, batch: RLBatch) -> Callable:
    """Jitted (state, RLBatch) -> (state, metrics) for the layout of `batch` (arrays or ShapeDtypeStructs); on
    batch.packed when it holds packed rows. The state is donated: the new one is written into its buffers (one
    copy of parameters and optimizer state per chip, not two), so the state passed in is unusable after."""
    shapes = layout_key(batch)

    def build():
      raw = make_rl_step(self.model_cfg, self.optimizer, self.objective, self.objective_kw, prompt_len=prompt_len,
                         jit=False, micro_batches=self.micro_batches, packed=batch.packed is not None)
      batch_sh = jax.tree.map(lambda x: self.rows(x.shape[0], len(x.shape)), batch)
      return sharding.jit_global(raw, in_shardings=(self.state_sharding, batch_sh),
                                 out_shardings=(self.state_sharding, None), donate_argnums=(0,))
    return self._cached(("step", prompt_len, shapes), build)

  def train_step(self, prompt_len: int) -> Callable:
    """(state, RLBatch) -> (state, metrics), jitted per batch layout with the state's shardings."""
    return lambda state, batch: self.call(self.train_jit(prompt_len, batch), state, batch)

  def shrinks(self) -> bool:
    """Whether rollouts run the shrinking sampler (`rl_jax.sampling.generate_shrinking`: rows that drew a stop
    token are dropped between decode buckets, sampling ends once every row has stopped; the same rows as the
    full-batch sampler): on a one-device mesh of one process when the task has stop tokens. Otherwise the
    jitted full-batch `sampler`, sharded over the mesh (the host reads nothing between its decode steps)."""
    return self.mesh.devices.size == 1 and jax.process_count() == 1 and bool(self.task.stop_tokens)

  def shrinking_samples(self, params, prompts: Prompts, key) -> Samples:
    """`sampler`'s Samples [n·G, T] from `generate_shrinking`, with the run's sampling settings."""
    stats = self.extras.sampler_inputs()
    return self.call(lambda: generate_shrinking(
        params, self.model_cfg, jnp.asarray(prompts.ids), jnp.asarray(prompts.mask), key,
        **self.sampling_settings(jnp.asarray(stats[0]) if stats else None)))

  def sampling_settings(self, temperature_stats) -> dict:
    """The run's sampling keywords for `generate_raw` / `generate_shrinking` (HAPO's entropy statistics
    `temperature_stats` [4] or None); the CPU kernels on one CPU device only."""
    t, cfg = self.task, self.cfg
    return dict(max_new_tokens=t.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                stop_tokens=tuple(t.stop_tokens), dtype=sampler_dtype(self.model_cfg), decode_block=self.decode_block,
                group_size=cfg.group_size, temperature_stats=temperature_stats, temperature_tau=cfg.temperature_tau,
                cpu_kernels=resolve_cpu_kernels(None, self.mesh.devices.flat))

  def rollout(self, params, prompts: Prompts, key) -> Rollouts:
    """`group_size` samples per prompt (prompt i → rows i·G..i·G+G−1) from the run's sampler (the shrinking one
    where `shrinks`)."""
    g = self.cfg.group_size
    if self.shrinks():
      out = self.shrinking_samples(params, prompts, key)
    else:
      out = self.call(self.sampler(*prompts.ids.shape), params, np.asarray(prompts.ids), np.asarray(prompts.mask),
                      key, *self.extras.sampler_inputs())   # host arrays go straight into the jitted call
    comp, cmask, lp = (sharding.to_host(x) for x in out)
    p_rep, m_rep = np.repeat(prompts.ids, g, axis=0), np.repeat(prompts.mask, g, axis=0)
    tokens = np.concatenate([p_rep, comp], axis=1)
    attn = np.concatenate([m_rep, cmask.astype(np.int32)], axis=1)
    return Rollouts(tokens, attn, comp, cmask, lp)

  def tree_rollout(self, params, prompts: Prompts, key) -> tuple[Rollouts, np.ndarray, np.ndarray]:
    """Tree rollouts as rows (prompt i → rows i·G..i·G+G−1), their tree paths [P, G, D] and valid rows [P·G]
    (False on the empty rows of a prompt whose branches all ended early)."""
    tr = self.call(self.tree_sampler(*prompts.ids.shape), params, jnp.asarray(prompts.ids), jnp.asarray(prompts.mask),
                   key)
    tr = jax.tree.map(sharding.to_host, tr)
    ro, valid = tree_to_rollouts(prompts.ids, prompts.mask, tr)
    return ro, tr.paths, valid


_COMPILED: dict = {}   # Run._cached


def packed_row_multiple(run: Run) -> int:
  """Packed rows come in multiples of lcm(train, log-prob micro-batch counts) × devices on the batch axes: a
  micro-batch (every k-th row, `rl_jax.train.split_micro`) then holds rows for every device."""
  return math.lcm(run.micro_batches, run.logprob_micro_batches) * run.mesh.shape["data"] * run.mesh.shape["fsdp"]


def layout_key(tree) -> tuple:
  """What a jitted function compiles for: the tree's structure (static fields included) and its leaves' shapes."""
  return jax.tree.structure(tree), tuple(tuple(x.shape) for x in jax.tree.leaves(tree))


class TaskShape(NamedTuple):
  """What of a Task decides the compiled functions: a stand-in for it when compiling ahead of time (the
  host-side choices of rl_jax.loop_extras read nothing compiled, so it claims what they check for)."""
  max_new_tokens: int
  stop_tokens: tuple = (0,)
  num_questions: int = 1
  response_formats: bool = True

  def prompts_for(self, *args):
    raise TypeError("TaskShape only describes shapes; it makes no prompts.")


def make_run(cfg: RLConfig, model_cfg, params, task: Task, *, prompt_len: int, decode_block: int = DECODE_BLOCK,
             **kw) -> Run:
  """`Run(cfg, model_cfg, params, task, ...)`, with micro-batch counts of 0 (auto) picked from the compiled memory
  of the run's own log-prob forward and train step on its devices, for prompts padded to `prompt_len` (the
  widest the task makes): `rl_jax.aot.pick_for_devices`."""
  if cfg.micro_batches and cfg.logprob_micro_batches:
    return Run(cfg, model_cfg, params, task, decode_block=decode_block, **kw)
  from rl_jax import aot
  shapes = aot.run_shapes(cfg, prompt_len=prompt_len, new_tokens=task.max_new_tokens, decode_block=decode_block)
  build = lambda k, k_lp: Run(cfg, model_cfg, params, task, decode_block=decode_block, micro_batches=k,
                              logprob_micro_batches=k_lp, **kw)
  k, k_lp = aot.pick_for_devices(build, shapes)
  print(f"micro-batches: {k} per update, {k_lp} per log-prob forward")
  return build(k, k_lp)


def ahead_of_time(cfg: RLConfig, model_cfg, *, prompt_len: int, max_new_tokens: int, stop_tokens: tuple = (0,),
                  decode_block: int = DECODE_BLOCK, **kw) -> dict:
  """--aot=TOPOLOGY: the run built for that TPU slice (its mesh from cfg.mesh, abstract weights from `model_cfg`)
  and its sampler, log-prob forward and train step compiled there (`rl_jax.aot.aot_report`); prints the per-chip
  memory table, writes the JSON report to cfg.aot_json (process 0), runs nothing. `kw`: Run's keywords."""
  from rl_jax import aot
  from rl_jax.models import init_params
  params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0)))
  task = TaskShape(max_new_tokens, tuple(stop_tokens))
  build = lambda devices, k, k_lp: Run(cfg, model_cfg, params, task, devices=devices, micro_batches=k,
                                       logprob_micro_batches=k_lp, decode_block=decode_block, **kw)
  shapes = aot.run_shapes(cfg, prompt_len=prompt_len, new_tokens=max_new_tokens, decode_block=decode_block)
  report = aot.aot_report(cfg.aot, build, shapes)
  print(aot.format_report(report))
  if cfg.aot_json and is_main_process():
    pathlib.Path(cfg.aot_json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.aot_json, json.dumps(report, indent=1))
  return report


def make_mesh(text: str, devices: Optional[Sequence] = None):
  """The run's mesh: with no −1 axis, the first data·fsdp·tensor devices (so '1,1,1' is one device)."""
  config = mesh_config(text)
  devices = list(jax.devices() if devices is None else devices)
  sizes = (config.data, config.fsdp, config.tensor)
  if -1 not in sizes:
    need = int(np.prod(sizes))
    if need > len(devices):
      raise ValueError(f"--mesh={text} needs {need} devices, have {len(devices)}.")
    devices = devices[:need]
  return sharding.make_mesh(config, devices)
