"""Training steps and the RL iteration.

One jit-compiled pure function per kind of update, `(state, batch) -> (state, metrics)`:
`make_sft_step` (teacher-forced cross-entropy) and `make_rl_step` (any objective from
`rl_jax.objectives`, or your own function with the same signature). The RL iteration around them
(rollouts → rewards → advantages → epochs over mini-batches) is plain Python in `rl_iteration`.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax import registry
from rl_jax.logprobs import token_logprobs
from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import sampler_dtype
from rl_jax.packing import Packed
from rl_jax.prefix_grouper import packed_logprobs
from rl_jax.sampling import DECODE_BLOCK, generate
from rl_jax.sharding import to_host

Array = jax.Array


class TrainState(NamedTuple):
  params: dict
  opt_state: optax.OptState
  step: Array          # int32 scalar
  rng: Array           # PRNG key


def init_state(params: dict, optimizer: optax.GradientTransformation, rng: Array) -> TrainState:
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), rng)


class SFTBatch(NamedTuple):
  prompts: Array       # [B, P] int32, left-padded
  prompt_mask: Array   # [B, P]
  answers: Array       # [B, T] int32, right-padded
  answer_mask: Array   # [B, T]


class RLBatch(NamedTuple):
  tokens: Array            # [B, P + T] prompt then completion
  attn_mask: Array         # [B, P + T] real tokens
  completion_mask: Array   # [B, T] trainable completion tokens
  old_logp: Optional[Array]  # [B, T] log π_old (recomputed by the trainer); None: one on-policy update
  advantages: Array        # [B] or [B, T]
  ref_logp: Optional[Array] = None   # [B, T] when the objective has β > 0
  rollout_logp: Optional[Array] = None   # [B, T] sampler log-probs μ (TIS / MIS corrections)
  packed: Optional[Packed] = None   # the same rows in the packed layout (rl_jax.packing), for a packed step


def _apply(optimizer, state, grads):
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state, step=state.step + 1)


def make_sft_step(cfg: ModelConfig, optimizer: optax.GradientTransformation) -> Callable:
  """Jitted (state, SFTBatch) -> (state, metrics): mean token cross-entropy on the answers."""

  def loss_fn(params, batch: SFTBatch):
    tokens = jnp.concatenate([batch.prompts, batch.answers], axis=1)
    attn = jnp.concatenate([batch.prompt_mask, batch.answer_mask], axis=1)
    logp, _ = token_logprobs(params, tokens, cfg, prompt_len=batch.prompts.shape[1], attn_mask=attn)
    m = batch.answer_mask.astype(jnp.float32)
    return -jnp.sum(logp * m) / jnp.maximum(jnp.sum(m), 1.0)

  @jax.jit
  def step(state: TrainState, batch: SFTBatch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    return _apply(optimizer, state, grads), {"sft_loss": loss, "grad_norm": optax.global_norm(grads)}

  return step


def _named_param(fn: Callable, name: str) -> bool:
  return registry.takes(fn, name)


def split_micro(x: Array, k: int) -> Array:
  """[B, ...] → [k, B/k, ...] with micro-batch j = rows j, j + k, j + 2k, … (strided, so a batch sharded in
  contiguous blocks over devices keeps every micro-batch spread over all of them)."""
  if x.shape[0] % k:
    raise ValueError(f"{x.shape[0]} rows do not split into {k} micro-batches.")
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def merge_micro(x: Array) -> Array:
  """Inverse of split_micro: [k, B/k, ...] → [B, ...] in the original row order."""
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def accumulated_value_and_grad(logp_fn: Callable, loss_of_logp: Callable, params, inputs, batch, micro_batches: int,
                               *, scattered: bool = False):
  """value_and_grad of L(log π(params)) over the whole batch, with the memory of one micro-batch.

  The loss reads the parameters only through the per-token log-probs ℓ = log π [B, T] (entropy is a
  stop-gradient input), so ∇L = Σ_j J_jᵀ (∂L/∂ℓ)_j over micro-batches j. Pass 1: ℓ and H for every micro-batch
  (forward only); then L, ∂L/∂ℓ on the full batch (any objective: token, sequence or group normalisation is
  untouched); pass 2: one vector-Jacobian product per micro-batch, accumulated in the parameters' dtype.
  `inputs`: arrays with a leading row axis, split into micro-batches (`split_micro`); `logp_fn(params, inputs_j)
  -> (logp, entropy)`; `loss_of_logp(logp, entropy, batch) -> (loss, aux)`. `scattered`: each micro-batch's
  logp_fn returns the full [B, T] layout, zero outside its own tokens (packed rows), so ℓ = Σ_j ℓ_j and every
  micro-batch's cotangent is the whole ∂L/∂ℓ.
  """
  k = micro_batches
  parts = jax.tree.map(lambda x: split_micro(x, k), inputs)
  frozen = jax.lax.stop_gradient(params)
  if scattered:      # summed in a carry: one [B, T] pair, not k of them
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(lambda x: logp_fn(frozen, x), jax.tree.map(lambda x: x[0], parts)))
    (logp, ent), _ = jax.lax.scan(lambda acc, x: (jax.tree.map(jnp.add, acc, logp_fn(frozen, x)), None), zeros, parts)
  else:
    logp, ent = (merge_micro(x) for x in jax.lax.map(lambda x: logp_fn(frozen, x), parts))
  (loss, aux), g = jax.value_and_grad(loss_of_logp, has_aux=True)(logp, ent, batch)

  def body(acc, xs):
    x, g_j = xs if not scattered else (xs, g)
    _, vjp = jax.vjp(lambda p: logp_fn(p, x)[0], params)
    return jax.tree.map(jnp.add, acc, vjp(g_j)[0]), None

  grads, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), parts if scattered else (parts, split_micro(g, k)))
  return (loss, aux), grads


def layout_logprobs(cfg: ModelConfig, *, prompt_len: int, packed: bool, shape: tuple[int, int]) -> Callable:
  """(params, inputs) -> (log-probs, entropies) [B, T] of the completion tokens: inputs = (tokens, attn_mask)
  [B, P + T] in the plain layout (`token_logprobs`), or an rl_jax.packing.Packed of the same rows
  (`packed_logprobs`: each prompt once, no padding, same values). shape = (B, T)."""
  if packed:
    return lambda params, x: packed_logprobs(params, cfg, x, shape)
  return lambda params, x: token_logprobs(params, x[0], cfg, prompt_len=prompt_len, attn_mask=x[1])


def layout_inputs(batch, packed: bool):
  """What `layout_logprobs` reads from an RLBatch: its Packed rows, or (tokens, attn_mask)."""
  if not packed:
    return (batch.tokens, batch.attn_mask)
  if batch.packed is None:
    raise ValueError("a packed step needs batch.packed (rl_jax.packing.pack_groups of the batch's rows).")
  return batch.packed


def make_rl_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, objective: Callable,
                 objective_kwargs: Optional[dict] = None, *, prompt_len: int, jit: bool = True,
                 micro_batches: int = 1, packed: bool = False) -> Callable:
  """Jitted (state, RLBatch) -> (state, metrics) for any objective with the rl_jax signature.

  The objective is called as objective(logp, old_logp, advantages, completion_mask, ref_logp=...,
  **objective_kwargs); if it takes `entropy` (HAPO, GTPO, DHPO, ...) the current policy's token
  entropies are passed too, `token_ids` and `rollout_logp` (the batch's sampler log-probs, TIS / MIS)
  likewise, and `rng` (Clip-Cov's random selection) gets a fresh key every update:
  fold_in(state.rng, state.step). `jit=False` returns the raw function, to be
  jitted with explicit shardings (rl_jax.sharding.jit_sharded_step). `micro_batches` > 1 accumulates the
  exact full-batch gradient over that many micro-batches (`accumulated_value_and_grad`): activation memory
  is set by the micro-batch, the update is the same (one extra forward pass). `packed=True` runs the forward on
  batch.packed (rl_jax.packing: each group's prompt once, no padding; Prefix Grouper, arXiv 2506.05433) with
  the same log-probs, loss and gradients as the plain [B, P + T] layout.
  """
  if micro_batches < 1:
    raise ValueError(f"micro_batches must be >= 1, got {micro_batches}.")
  kwargs = dict(objective_kwargs or {})
  wants_entropy = _named_param(objective, "entropy") and "entropy" not in kwargs
  wants_ids = _named_param(objective, "token_ids") and "token_ids" not in kwargs
  wants_mu = _named_param(objective, "rollout_logp") and "rollout_logp" not in kwargs
  wants_rng = _named_param(objective, "rng") and "rng" not in kwargs

  def loss_of_logp(logp, entropy, batch: RLBatch, key=None):
    extra = dict(kwargs)
    if wants_entropy:
      extra["entropy"] = entropy
    if wants_ids:
      extra["token_ids"] = batch.tokens[:, prompt_len:]
    if wants_mu:
      if batch.rollout_logp is None:
        raise ValueError("the objective takes rollout_logp (sampler log-probs); the batch holds none.")
      extra["rollout_logp"] = batch.rollout_logp
    if wants_rng:
      extra["rng"] = key
    # old_logp None = a single on-policy update: π_old is the current policy, ratio ≡ 1 in value.
    old_logp = jax.lax.stop_gradient(logp) if batch.old_logp is None else batch.old_logp
    loss, metrics = objective(logp, old_logp, batch.advantages, batch.completion_mask, ref_logp=batch.ref_logp,
                              **extra)
    m = batch.completion_mask
    n = jnp.maximum(jnp.sum(m), 1.0)
    ratio = jnp.exp(jax.lax.stop_gradient(logp) - old_logp)      # token ratio π/π_old, whatever the objective uses
    ratio_mean = jnp.sum(ratio * m) / n
    metrics = dict(metrics, entropy=jnp.sum(entropy * m) / n,
                   token_ratio_std=jnp.sqrt(jnp.sum(jnp.square(ratio - ratio_mean) * m) / n))
    return loss, metrics

  def step(state: TrainState, batch: RLBatch):
    key = jax.random.fold_in(state.rng, state.step)
    loss_of = lambda logp, entropy, b: loss_of_logp(logp, entropy, b, key)
    logp_fn = layout_logprobs(cfg, prompt_len=prompt_len, packed=packed, shape=batch.completion_mask.shape)
    inputs = layout_inputs(batch, packed)
    if micro_batches == 1:
      loss_fn = lambda params, b: loss_of(*logp_fn(params, inputs), b)
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    else:
      (loss, metrics), grads = accumulated_value_and_grad(logp_fn, loss_of, state.params, inputs, batch,
                                                          micro_batches, scattered=packed)
    return _apply(optimizer, state, grads), dict(metrics, grad_norm=optax.global_norm(grads))

  return jax.jit(step) if jit else step


def make_logprob_fn(cfg: ModelConfig, *, prompt_len: int, micro_batches: int = 1, jit: bool = True,
                    packed: bool = False) -> Callable:
  """Jitted (params, tokens, attn_mask[, packed rows]) -> per-token log-probs [B, T] of the completion (no
  gradient), `micro_batches` forwards of B / micro_batches rows each (jit=False: the raw function).
  `packed=True` computes them on the Packed rows (rl_jax.packing) of the same batch: each prompt once, no
  padding, the same values at real tokens (0 at padding); tokens then only give the shape [B, P + T]."""

  def fn(params, tokens, attn_mask, rows=None):
    shape = (tokens.shape[0], tokens.shape[1] - prompt_len)
    one = lambda x: layout_logprobs(cfg, prompt_len=prompt_len, packed=packed, shape=shape)(params, x)[0]
    if packed and rows is None:
      raise ValueError("a packed log-prob forward needs the batch's Packed rows (rl_jax.packing.pack_groups).")
    inputs = rows if packed else (tokens, attn_mask)
    if micro_batches == 1:
      return one(inputs)
    out = jax.lax.map(one, jax.tree.map(lambda x: split_micro(x, micro_batches), inputs))
    return jnp.sum(out, axis=0) if packed else merge_micro(out)

  return jax.jit(fn) if jit else fn


class Rollouts(NamedTuple):
  tokens: np.ndarray         # [P·G, P_len + T]
  attn_mask: np.ndarray
  completion: np.ndarray     # [P·G, T]
  completion_mask: np.ndarray
  rollout_logp: np.ndarray   # sampler log-probs


def rollout(params, cfg: ModelConfig, prompts: np.ndarray, prompt_mask: np.ndarray, rng: Array, *, group_size: int,
            max_new_tokens: int, temperature: float, stop_tokens: tuple, pad_id: int = 0,
            top_p: float = 1.0, decode_block: int = DECODE_BLOCK) -> Rollouts:
  """Samples `group_size` completions per prompt (rows grouped contiguously: prompt i → rows i·G..i·G+G−1); each
  prompt is prefilled once and its KV cache shared by its G rows. `decode_block`: the sampler's cache growth
  step (rl_jax.sampling.generate)."""
  p_rep = np.repeat(prompts, group_size, axis=0)
  m_rep = np.repeat(prompt_mask, group_size, axis=0)
  out = generate(params, cfg, jnp.asarray(prompts), jnp.asarray(prompt_mask), rng, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_p=top_p, stop_tokens=tuple(stop_tokens), pad_id=pad_id,
                 group_size=group_size, dtype=sampler_dtype(cfg), decode_block=decode_block)
  comp, cmask, lp = (np.asarray(x) for x in out)
  tokens = np.concatenate([p_rep, comp], axis=1)
  attn = np.concatenate([m_rep, cmask.astype(np.int32)], axis=1)
  return Rollouts(tokens, attn, comp, cmask, lp)


def rl_iteration(state: TrainState, rl_step: Callable, logprob_fn: Callable, rollouts: Rollouts,
                 rewards: np.ndarray, advantages_fn: Callable, *, epochs: int = 1, minibatches: int = 1,
                 ref_params=None, valid_rows: Optional[np.ndarray] = None,
                 recompute_old_logp: bool = False, keep_groups: bool = False,
                 pack: Optional[Callable] = None) -> tuple[TrainState, dict]:
  """Advantages from rewards [P, G], then `epochs` passes over `minibatches` shuffled mini-batches.

  `valid_rows` [P·G] (bool) removes rows from the loss (e.g. DAPO's filtered groups) by masking.
  With a single update per batch (epochs = minibatches = 1) π_old is the current policy, so the
  separate no-gradient forward that recomputes log π_old is skipped (the step uses stop_gradient(log π));
  `recompute_old_logp=True` forces it. `keep_groups=True` shuffles whole groups, so every mini-batch holds
  complete groups in order (objectives that read the group layout, e.g. GTPO's `group_size`). `advantages_fn` may return [P, G] (one advantage per response) or
  [P, G, T] (per token: TEMPO, TreePO, ...). `pack(tokens, attn_mask) -> Packed` (numpy, e.g.
  rl_jax.packing.pack_groups): the log-prob forwards and every mini-batch also get their rows in the packed
  layout (for `logprob_fn` and `rl_step` built with packed=True). Returns the new state, the mean of each metric over the
  updates, and `advantage_stats`.
  """
  p, g = rewards.shape
  adv = np.asarray(advantages_fn(jnp.asarray(rewards, jnp.float32)))
  adv = adv.reshape(p * g, *adv.shape[2:])        # [P·G] sequence-level or [P·G, T] token-level
  tokens, attn = np.asarray(rollouts.tokens), np.asarray(rollouts.attn_mask)   # host arrays: rows picked in numpy
  packed_of = lambda rows: None if pack is None else pack(tokens[rows], attn[rows])
  whole = functools.cache(lambda: packed_of(slice(None)))    # the full batch packed once, for both forwards
  logp_of = (lambda params: logprob_fn(params, tokens, attn)) if pack is None else (
      lambda params: logprob_fn(params, tokens, attn, whole()))
  single = epochs == 1 and minibatches == 1 and not recompute_old_logp
  old_logp = None if single else to_host(logp_of(state.params))
  ref_logp = None if ref_params is None else to_host(logp_of(ref_params))
  cmask = rollouts.completion_mask.astype(np.float32)
  if valid_rows is not None:
    cmask = cmask * valid_rows[:, None]
  n = p * g
  if n % minibatches:
    raise ValueError(f"{n} rollouts do not split into {minibatches} equal mini-batches.")
  if keep_groups and p % minibatches:
    raise ValueError(f"keep_groups: {p} groups do not split into {minibatches} equal mini-batches.")
  size = n // minibatches
  mu = np.asarray(rollouts.rollout_logp, np.float32)
  history = []
  for epoch in range(epochs):
    rng, perm = shuffle_key(state.rng, p if keep_groups else n)
    state = state._replace(rng=rng)
    order = np.asarray(perm)
    if keep_groups:
      order = (order[:, None] * g + np.arange(g)[None, :]).reshape(n)
    for k in range(minibatches):
      idx = order[k * size:(k + 1) * size]
      batch = RLBatch(tokens[idx], attn[idx], cmask[idx], None if old_logp is None else old_logp[idx], adv[idx],
                      None if ref_logp is None else ref_logp[idx], mu[idx], packed_of(idx))
      state, metrics = rl_step(state, batch)
      history.append(metrics)
  history = jax.device_get(history)               # one transfer of every update's metrics, after the last update
  mean = {k: float(np.mean([float(m[k]) for m in history])) for k in history[0]}
  mean.update(advantage_stats(adv, cmask, rewards))
  return state, mean


def advantage_stats(adv: np.ndarray, cmask: np.ndarray, rewards: np.ndarray) -> dict:
  """Where the advantages give signal.

  nonzero_adv_frac: share of trainable completion tokens whose advantage is non-zero (|A| > 1e-8);
  flat_groups: share of groups whose rewards all agree (no signal for GRPO);
  flat_group_signal: share of those flat groups with some non-zero advantage (NGRPO, DCPO's SAS), 0 if none.
  `adv` [P·G] or [P·G, T]; `cmask` [P·G, T]; `rewards` [P, G].
  """
  nz = np.abs(adv) > 1e-8
  nz_tok = np.broadcast_to(nz[:, None], cmask.shape) if nz.ndim == 1 else nz
  m = cmask > 0
  p, g = rewards.shape
  flat = np.std(rewards, axis=1) == 0
  row_signal = (nz_tok & m).any(axis=1).reshape(p, g).any(axis=1)
  return {"nonzero_adv_frac": float((nz_tok & m).sum() / max(m.sum(), 1)),
          "flat_groups": float(flat.mean()),
          "flat_group_signal": float((row_signal & flat).sum() / max(flat.sum(), 1))}


@jax.jit
def split_key(key: Array) -> tuple[Array, Array]:
  """The two halves of jax.random.split(key), in one compiled call (eagerly, the split and the unpacking of its
  rows are separate dispatches, milliseconds of host time per RL step on a CPU backend)."""
  keys = jax.random.split(key)
  return keys[0], keys[1]


@functools.partial(jax.jit, static_argnums=1)
def shuffle_key(key: Array, n: int) -> tuple[Array, Array]:
  """(next key, a permutation of range(n)) = (k1, jax.random.permutation(k2, n)) for k1, k2 = split(key): an
  epoch's row order and the key the state carries on, in one compiled call."""
  rng, sub = split_key(key)
  return rng, jax.random.permutation(sub, n)


def dynamic_sampling_mask(rewards: np.ndarray) -> np.ndarray:
  """DAPO's group filter: True for groups whose rewards are not all equal ([P] bool)."""
  return np.std(rewards, axis=1) > 0


class Timer:
  def __init__(self):
    self.start = time.perf_counter()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
  return Rollouts(*(np.concatenate(xs, axis=0) for xs in zip(*parts)))


def dynamic_sampling(sample_fn: Callable[[int], tuple[Rollouts, np.ndarray]], num_groups: int, group_size: int, *,
                     max_batches: int = 8) -> tuple[Rollouts, np.ndarray, dict]:
  """DAPO dynamic sampling: over-sample, drop groups whose rewards all agree, refill until `num_groups`.

  `sample_fn(attempt)` returns (rollouts with rows grouped by prompt, rewards [P, G]) for a fresh batch
  of prompts. Kept groups are concatenated in order and truncated to exactly `num_groups` groups. If
  `max_batches` (≤ 0: unlimited) batches do not yield enough, the batch is filled up with the last
  rejected groups masked out (their completion mask is zeroed), and `stats["short"]` says by how many.
  Returns (rollouts, rewards [num_groups, G], stats).
  """
  kept_ro, kept_r, rejected_ro, rejected_r = [], [], [], []
  attempt, have = 0, 0
  while have < num_groups and (max_batches <= 0 or attempt < max_batches):
    ro, rewards = sample_fn(attempt)
    attempt += 1
    keep = dynamic_sampling_mask(rewards)
    rows = np.repeat(keep, group_size)
    if keep.any():
      kept_ro.append(Rollouts(*(x[rows] for x in ro)))
      kept_r.append(rewards[keep])
      have += int(keep.sum())
    if (~keep).any():
      rejected_ro.append(Rollouts(*(x[~rows] for x in ro)))
      rejected_r.append(rewards[~keep])
  short = max(0, num_groups - have)
  if short:
    filler = concat_rollouts(rejected_ro)
    filler = Rollouts(*(x[:short * group_size] for x in filler))
    filler = filler._replace(completion_mask=np.zeros_like(filler.completion_mask))
    kept_ro.append(filler)
    kept_r.append(np.concatenate(rejected_r)[:short])
  ro = concat_rollouts(kept_ro)
  ro = Rollouts(*(x[:num_groups * group_size] for x in ro))
  rewards = np.concatenate(kept_r)[:num_groups]
  return ro, rewards, {"gen_batches": attempt, "short": short}
