"""The one place that defines the device mesh and how every array is laid out on it.

Three mesh axes: `data` (batch), `fsdp` (batch AND parameter shards, ZeRO-3 style) and `tensor`
(attention heads / MLP hidden units). `MeshConfig(data=-1, fsdp=1, tensor=1)` fills the −1 axis
with the remaining devices, so changing the layout is a config change:

  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  state_sh = state_shardings(mesh, state, optimizer)
  step = jax.jit(raw_step, in_shardings=(state_sh, batch_shardings(mesh, batch)),
                 out_shardings=(state_sh, None), donate_argnums=0)

A dimension that the assigned axes do not divide evenly is left unsharded (replicated) rather than
failing, so tiny test models run on any mesh. Sums inside objectives are over the global batch, so
token-mean denominators are global whatever the sharding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1     # pure data parallelism (params replicated across it)
  fsdp: int = 1      # batch and parameter sharding
  tensor: int = 1    # tensor (model) parallelism

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f"At most one mesh axis can be -1, got {self}.")
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"Mesh axis sizes must be positive or -1, got {self}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"{num_devices} devices do not split into {self}.")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(f"Mesh {tuple(sizes)} needs {math.prod(sizes)} devices, have {num_devices}.")
    return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Optional[Sequence] = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = config.shape(len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)


# Parameter partition rules, by the leaf's name in the rl_jax.models parameter tree.
# Stacked layer weights carry a leading (unsharded) layer axis.
PARAM_RULES = {
    "embed": P("tensor", "fsdp"),           # [V, D]
    "lm_head": P("fsdp", "tensor"),         # [D, V]
    "final_norm": P(),
    "attn_norm": P(), "mlp_norm": P(), "q_norm": P(), "k_norm": P(),
    "wq": P(None, "fsdp", "tensor"), "wk": P(None, "fsdp", "tensor"), "wv": P(None, "fsdp", "tensor"),
    "wo": P(None, "tensor", "fsdp"),
    "bq": P(None, "tensor"), "bk": P(None, "tensor"), "bv": P(None, "tensor"),
    "w_gate": P(None, "fsdp", "tensor"), "w_up": P(None, "fsdp", "tensor"), "w_down": P(None, "tensor", "fsdp"),
}


def _axis_size(mesh: Mesh, axis) -> int:
  if axis is None:
    return 1
  names = axis if isinstance(axis, tuple) else (axis,)
  return math.prod(mesh.shape[a] for a in names)


def fit_spec(mesh: Mesh, spec: P, shape: tuple[int, ...]) -> P:
  """Drops the axes of `spec` that do not divide the corresponding dimension of `shape`."""
  parts = list(spec) + [None] * (len(shape) - len(spec))
  return P(*[a if a is not None and shape[i] % _axis_size(mesh, a) == 0 else None for i, a in enumerate(parts)])


def _leaf_name(path) -> str:
  key = path[-1]
  return str(getattr(key, "key", getattr(key, "name", key)))


def param_specs(mesh: Mesh, params) -> dict:
  """PartitionSpecs for a parameter tree (unknown leaves are replicated)."""
  def spec(path, x):
    return fit_spec(mesh, PARAM_RULES.get(_leaf_name(path), P()), np.shape(x))
  return jax.tree_util.tree_map_with_path(spec, params)


def named(mesh: Mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def param_shardings(mesh: Mesh, params):
  return named(mesh, param_specs(mesh, params))


def opt_state_specs(mesh: Mesh, optimizer: optax.GradientTransformation, opt_state, params):
  """Optimizer state laid out like the parameters it mirrors (Adam's mu/nu), scalars replicated."""
  p_specs = param_specs(mesh, params)
  return optax.tree_map_params(optimizer, lambda _, s: s, opt_state, p_specs,
                               transform_non_params=lambda _: P(), is_leaf=lambda s: isinstance(s, P))


def state_shardings(mesh: Mesh, state, optimizer: optax.GradientTransformation):
  """Shardings for an rl_jax.train.TrainState: params and optimizer state sharded, step and RNG replicated."""
  specs = type(state)(param_specs(mesh, state.params), opt_state_specs(mesh, optimizer, state.opt_state, state.params),
                      P(), P())
  return named(mesh, specs)


def batch_spec(mesh: Mesh, x) -> P:
  """Leading (batch) axis over data × fsdp; other axes replicated."""
  return fit_spec(mesh, P(BATCH), np.shape(x)) if np.ndim(x) else P()


def batch_shardings(mesh: Mesh, batch):
  return jax.tree.map(lambda x: NamedSharding(mesh, batch_spec(mesh, x)), batch)


def to_host(x) -> np.ndarray:
  """The whole global value of `x` as a numpy array on every process: a plain fetch when this process holds
  every shard, otherwise an all-gather across processes (a multi-host run's sharded rollouts)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def global_input(x, s: NamedSharding):
  """`x` as a jax.Array laid out by `s`. On a multi-host mesh (`s` spans other processes' devices) a host or
  process-local value, the same on every process, becomes the global array whose local shards this process
  holds; arrays already spread over the mesh, and every input of a single-process run, pass unchanged."""
  if s.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return x
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, s, lambda index: host[index])


class GlobalInputs:
  """A jitted function whose host inputs become global arrays first (`global_input`, one sharding per
  argument subtree, as jax.jit's in_shardings); everything else (`lower`, ...) is the jitted function's."""

  def __init__(self, jitted: Callable, in_shardings: tuple):
    self.jitted, self.in_shardings = jitted, tuple(in_shardings)

  def __call__(self, *args):
    if jax.process_count() > 1:
      args = tuple(jax.tree.map(lambda x, s=s: global_input(x, s), a) if isinstance(s, NamedSharding)
                   else jax.tree.map(global_input, a, s) for a, s in zip(args, self.in_shardings))
    return self.jitted(*args)

  def __getattr__(self, name):
    return getattr(self.jitted, name)


def jit_global(fn: Callable, *, in_shardings: tuple, **kw) -> GlobalInputs:
  """jax.jit(fn, in_shardings=..., **kw) that also takes host inputs on a multi-host mesh (GlobalInputs)."""
  return GlobalInputs(jax.jit(fn, in_shardings=in_shardings, **kw), in_shardings)


def shard(tree, shardings):
  """Places a host tree onto the mesh (jax.device_put with matching shardings)."""
  return jax.tree.map(jax.device_put, tree, shardings)


def jit_sharded_step(step_fn, mesh: Mesh, state, optimizer, batch, *, donate: bool = False):
  """jax.jit of a raw (state, batch) -> (state, metrics) with explicit in/out shardings on `mesh`."""
  st = state_shardings(mesh, state, optimizer)
  bt = batch_shardings(mesh, batch)
  return jax.jit(step_fn, in_shardings=(st, bt), out_shardings=(st, None), donate_argnums=(0,) if donate else ()), st, bt


def jit_sharded_generate(mesh: Mesh, params, **static):
  """rl_jax.sampling.generate jitted with explicit shardings: parameters by the partition rules, prompts,
  masks and outputs over the batch axes, the RNG key replicated. `static` are generate's static keywords
  (cfg, max_new_tokens, temperature, ...). Returns (fn(params, prompts, prompt_mask, rng), param_shardings).
  """
  from rl_jax.sampling import Samples, generate_raw

  p_sh = param_shardings(mesh, params)
  rows = NamedSharding(mesh, P(BATCH))
  fn = jax.jit(lambda params, prompts, mask, rng: generate_raw(params, static["cfg"], prompts, mask, rng,
                                                               **{k: v for k, v in static.items() if k != "cfg"}),
               in_shardings=(p_sh, rows, rows, NamedSharding(mesh, P())), out_shardings=Samples(rows, rows, rows))
  return fn, p_sh
