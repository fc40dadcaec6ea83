"""TreePO-style tree rollouts: fixed-length segments, branching at uncertain points, shared prefixes.

"TreePO: Bridging the Gap of Policy Optimization and Efficacy and Inference Efficiency with
Heuristic Tree-based Modeling", arXiv 2508.17445. Per prompt the rollout grows a tree of segments of
`segment_len` tokens. The prompt is prefilled once per prompt; the root fans out into `first_width`
branches; after every segment each unfinished node may fork into more children until the prompt
holds `group_size` leaves (width w_{d+1} = min(G, w_d · branch_factor)). Children inherit their
parent's KV cache by copy (a gather over rows), so a shared prefix is decoded exactly once.

Which nodes fork: every node keeps one child (a finished node keeps itself, as a leaf, and never
forks: early stop); the extra children go to unfinished nodes ranked by `branch_by`:
  "entropy": highest mean entropy of the sampling distribution over the node's last segment first
             (branching at uncertain points), round-robin when there are more extras than nodes;
  "order":   the same round-robin in row order (the official sampler's fixed divergence
             `tree_fixed_step_div`, without its random first width).
When every node of a prompt has finished before its width reached G, the remaining rows are empty:
`valid` is False there, their mask is 0 and their paths are −1 (drop them or give them zero weight).

Output layout matches `rl_jax.advantages.treepo`: `paths[p, g, d]` is the node id of leaf g's node
at depth d + 1 (−1 past its leaf); leaves sharing the id at depth d share that whole prefix.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.advantages.batch import masked_group_stats  # noqa: F401  (statistics of tree groups)
from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import KVCache, default_positions, forward_with_cache, init_cache
from rl_jax.sampling import filter_logits
from rl_jax.train import Rollouts

Array = jax.Array


class TreeRollout(NamedTuple):
  tokens: Array   # [P, G, D·L] int32 completion tokens of each leaf (pad_id after its stop token)
  mask: Array     # [P, G, D·L] float32, 1 on generated tokens up to and including the first stop token
  logp: Array     # [P, G, D·L] float32 sampler log-probs of the chosen tokens (0 where mask is 0)
  paths: Array    # [P, G, D] int32 node id at depth 1..D (−1 past the leaf); the treepo encoding
  valid: Array    # [P, G] bool, False on empty rows (every branch of the prompt finished early)


def tree_widths(*, group_size: int, first_width: int, branch_factor: int, max_depth: int) -> tuple[int, ...]:
  """Rows per prompt at depth 1..D: w_1 = first_width, w_{d+1} = min(G, w_d · branch_factor)."""
  if not 1 <= first_width <= group_size:
    raise ValueError(f"first_width must be in [1, group_size={group_size}], got {first_width}.")
  if branch_factor < 1 or max_depth < 1:
    raise ValueError(f"branch_factor and max_depth must be >= 1, got {branch_factor}, {max_depth}.")
  widths = [first_width]
  for _ in range(max_depth - 1):
    widths.append(min(group_size, widths[-1] * branch_factor))
  if widths[-1] != group_size:
    raise ValueError(f"The tree reaches only {widths[-1]} leaves in {max_depth} segments (first_width={first_width}, "
                     f"branch_factor={branch_factor}); group_size={group_size} needs more depth or branching.")
  return tuple(widths)


def allocate_children(finished: Array, score: Array, width_next: int) -> tuple[Array, Array]:
  """Parent row of each of `width_next` children per prompt, and whether the child is a real row.

  Args:
    finished: [P, W] bool, nodes that emitted a stop token; score: [P, W] uncertainty (higher first).
  Returns:
    (parent [P, W'] int32, alive [P, W'] bool). Children 0..W−1 are the parents themselves; the W' − W
    extras go round-robin to unfinished parents sorted by descending score (ties by row); with no
    unfinished parent the extras are not alive.
  """
  if finished.ndim != 2 or score.shape != finished.shape:
    raise ValueError(f"finished and score must both be [P, W], got {finished.shape} and {score.shape}.")
  p, w = finished.shape
  if width_next < w:
    raise ValueError(f"width_next ({width_next}) must be >= the current width ({w}).")
  key = jnp.where(finished, jnp.inf, -score.astype(jnp.float32))
  order = jnp.argsort(key, axis=1, stable=True).astype(jnp.int32)                 # unfinished first
  n_open = jnp.sum(~finished, axis=1)                                             # [P]
  extra = jnp.arange(width_next - w)
  slot = extra[None, :] % jnp.maximum(n_open, 1)[:, None]                         # [P, E]
  parent = jnp.concatenate([jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), (p, w)),
                            jnp.take_along_axis(order, slot, axis=1)], axis=1)
  alive = jnp.concatenate([jnp.ones((p, w), bool), jnp.broadcast_to((n_open > 0)[:, None], (p, width_next - w))], 1)
  return parent, alive


class _State(NamedTuple):
  last_logits: Array  # [R, V]
  cache: KVCache      # [L, R, S, K, hd]
  key_valid: Array    # [R, S] int32
  done: Array         # [R] bool
  alive: Array        # [R] bool (False on empty rows)
  tokens: Array       # [R, N] int32
  mask: Array         # [R, N] float32
  logp: Array         # [R, N] float32
  paths: Array        # [R, D] int32


def _gather_rows(state: _State, rows: Array, alive: Array) -> _State:
  take = lambda a: a[rows]
  return _State(take(state.last_logits), KVCache(state.cache.k[:, rows], state.cache.v[:, rows]),
                take(state.key_valid), take(state.done), take(state.alive) & alive, take(state.tokens),
                take(state.mask), take(state.logp), take(state.paths))


def _segment(params, cfg, state, rng, start, next_pos, *, prompt_len, segment_len, temperature, top_k, top_p, stops,
             pad_id):
  """Decodes one segment of `segment_len` tokens for every row; returns (state, mean entropy [R])."""

  def step(carry, i):
    last_logits, cache, key_valid, done, rng, ent_sum, tokens, mask, logp_buf = carry
    rng, sub = jax.random.split(rng)
    if temperature == 0.0:
      dist = last_logits
      token = jnp.argmax(last_logits, axis=-1).astype(jnp.int32)
    else:
      dist = filter_logits(last_logits, temperature=temperature, top_k=top_k, top_p=top_p)
      token = jax.random.categorical(sub, dist, axis=-1).astype(jnp.int32)
    log_q = jax.nn.log_softmax(dist, -1)
    logp = jnp.take_along_axis(log_q, token[:, None], -1)[:, 0]
    ent = -jnp.sum(jnp.where(jnp.isfinite(log_q), jnp.exp(log_q) * log_q, 0.0), -1)
    live = ~done & state.alive
    token = jnp.where(live, token, pad_id)
    t = start + i                                                                   # completion index
    slot = prompt_len + t
    key_valid = key_valid.at[:, slot].set(live.astype(jnp.int32))
    logits, cache = forward_with_cache(params, token[:, None], cfg, cache, slot, (next_pos + t)[:, None], key_valid)
    done = done | (live & jnp.any(token[:, None] == stops[None, :], axis=-1))
    tokens = tokens.at[:, t].set(token)
    mask = mask.at[:, t].set(live.astype(jnp.float32))
    logp_buf = logp_buf.at[:, t].set(jnp.where(live, logp, 0.0))
    ent_sum = ent_sum + jnp.where(live, ent, 0.0)
    return (logits[:, -1], cache, key_valid, done, rng, ent_sum, tokens, mask, logp_buf), None

  r = state.done.shape[0]
  init = (state.last_logits, state.cache, state.key_valid, state.done, rng, jnp.zeros((r,)), state.tokens, state.mask,
          state.logp)
  (last_logits, cache, key_valid, done, _, ent_sum, tokens, mask, logp), _ = jax.lax.scan(
      step, init, jnp.arange(segment_len))
  n_live = jnp.sum(jax.lax.dynamic_slice_in_dim(mask, start, segment_len, axis=1), axis=1)
  new = state._replace(last_logits=last_logits, cache=cache, key_valid=key_valid, done=done, tokens=tokens, mask=mask,
                       logp=logp)
  return new, ent_sum / jnp.maximum(n_live, 1.0)


TREE_STATIC_ARGS = ("cfg", "group_size", "segment_len", "max_depth", "first_width", "branch_factor", "branch_by",
                    "temperature", "top_k", "top_p", "stop_tokens", "pad_id")


def tree_rollout_raw(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, rng: Array, *,
                     group_size: int = 16, segment_len: int = 512, max_depth: int = 14, first_width: int = 8,
                     branch_factor: int = 2, branch_by: str = "entropy", temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, stop_tokens: Sequence[int] = (), pad_id: int = 0) -> TreeRollout:
  """Samples a tree of `group_size` leaves per prompt in `max_depth` segments of `segment_len` tokens.

  Defaults follow the official TreePO sampler (n = 16 leaves, 512-token segments, depth 14, first
  width up to 8, fork factor 2); its first width is random in the code, a fixed keyword here.
  Args:
    prompts: [P, S] int32, left-padded; prompt_mask: [P, S], 1 on real prompt tokens.
    stop_tokens: token ids that end a branch (kept, masked 1); later tokens are pad_id, masked 0.
  Returns:
    TreeRollout with leaves [P, G, max_depth · segment_len] and tree paths [P, G, max_depth].
  """
  if branch_by not in ("entropy", "order"):
    raise ValueError(f"Unknown branch_by {branch_by!r}; expected 'entropy' or 'order'.")
  if prompts.ndim != 2 or prompt_mask.shape != prompts.shape:
    raise ValueError(f"prompts and prompt_mask must both be [P, S], got {prompts.shape} and {prompt_mask.shape}.")
  if segment_len < 1:
    raise ValueError(f"segment_len must be >= 1, got {segment_len}.")
  widths = tree_widths(group_size=group_size, first_width=first_width, branch_factor=branch_factor,
                       max_depth=max_depth)
  n_prompts, s = prompts.shape
  n_new = max_depth * segment_len
  if s + n_new > cfg.max_seq_len:
    raise ValueError(f"prompt length {s} + max_depth·segment_len {n_new} exceeds the model's cache/context "
                     f"max_seq_len={cfg.max_seq_len}.")
  prompt_mask = prompt_mask.astype(jnp.int32)
  key_valid = jnp.concatenate([prompt_mask, jnp.zeros((n_prompts, n_new), jnp.int32)], axis=1)
  logits, cache = forward_with_cache(params, prompts, cfg, init_cache(cfg, n_prompts, s + n_new), 0,
                                     default_positions(prompt_mask), key_valid, last_only=True)  # the prompt, once
  stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
  state = _State(logits[:, -1], cache, key_valid, jnp.zeros((n_prompts,), bool), jnp.ones((n_prompts,), bool),
                 jnp.full((n_prompts, n_new), pad_id, jnp.int32), jnp.zeros((n_prompts, n_new)),
                 jnp.zeros((n_prompts, n_new)), jnp.full((n_prompts, max_depth), -1, jnp.int32))
  prompt_pos = jnp.sum(prompt_mask, axis=1)                                           # [P]
  base = jnp.arange(n_prompts, dtype=jnp.int32)[:, None]
  width, score = 1, jnp.zeros((n_prompts,))
  for d, width_next in enumerate(widths):
    if d == 0:
      parent, alive = jnp.zeros((n_prompts, width_next), jnp.int32), jnp.ones((n_prompts, width_next), bool)
    else:
      rank = score if branch_by == "entropy" else jnp.zeros_like(score)
      parent, alive = allocate_children(state.done.reshape(n_prompts, width), rank.reshape(n_prompts, width), width_next)
    state = _gather_rows(state, (base * width + parent).reshape(-1), alive.reshape(-1))
    width = width_next
    open_ = state.alive & ~state.done
    node = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (n_prompts, width)).reshape(-1)
    state = state._replace(paths=state.paths.at[:, d].set(jnp.where(open_, node, -1)))
    next_pos = jnp.repeat(prompt_pos, width)
    rng, sub = jax.random.split(rng)
    run = functools.partial(_segment, params, cfg, start=d * segment_len, next_pos=next_pos, prompt_len=s,
                            segment_len=segment_len, temperature=temperature, top_k=top_k, top_p=top_p, stops=stops,
                            pad_id=pad_id)
    state, score = jax.lax.cond(jnp.any(open_), lambda st: run(st, sub),                # early stop: all finished
                                lambda st: (st, jnp.zeros((st.done.shape[0],))), state)
  shape, keep = (n_prompts, group_size), state.alive[:, None]
  return TreeRollout(jnp.where(keep, state.tokens, pad_id).reshape(shape + (n_new,)),
                     (state.mask * keep).reshape(shape + (n_new,)), (state.logp * keep).reshape(shape + (n_new,)),
                     jnp.where(keep, state.paths, -1).reshape(shape + (max_depth,)), state.alive.reshape(shape))


tree_rollout = jax.jit(tree_rollout_raw, static_argnames=TREE_STATIC_ARGS)
tree_rollout.__doc__ = tree_rollout_raw.__doc__


# ------------------------------------------------------------------ tree rollouts as training rows

def tree_to_rollouts(prompts: np.ndarray, prompt_mask: np.ndarray, tr) -> tuple[Rollouts, np.ndarray]:
  """Flattens a TreeRollout [P, G, T] into Rollouts rows (prompt i → rows i·G..) and the valid-row mask."""
  p, g, t = tr.tokens.shape
  comp = np.asarray(tr.tokens).reshape(p * g, t)
  cmask = np.asarray(tr.mask).reshape(p * g, t)
  p_rep, m_rep = np.repeat(prompts, g, axis=0), np.repeat(prompt_mask, g, axis=0)
  tokens = np.concatenate([p_rep, comp], axis=1)
  attn = np.concatenate([m_rep, (cmask > 0).astype(np.int32)], axis=1)
  ro = Rollouts(tokens, attn, comp, cmask, np.asarray(tr.logp).reshape(p * g, t))
  return ro, np.asarray(tr.valid).reshape(p * g)


def impute_empty_rows(rewards: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Rewards [P, G] with each empty tree row (valid False) set to its group's mean over valid rows.

  Empty rows are masked out of the loss; giving them the valid mean leaves every group mean, and so
  every valid row's centred reward, as if the group held only its valid rows (empty rows share path
  −1, a subtree of their own, so they never enter a valid row's subtree averages).
  """
  cnt = valid.sum(1, keepdims=True)
  mean = np.where(cnt > 0, (rewards * valid).sum(1, keepdims=True) / np.maximum(cnt, 1), 0.0)
  return np.where(valid, rewards, mean).astype(np.float32)


def first_width(group: int, depth: int) -> int:
  """Smallest power-of-two first width that reaches `group` leaves with fork factor 2 in `depth` segments."""
  w = group
  while w % 2 == 0 and w // 2 * 2 ** (depth - 1) >= group:
    w //= 2
  return w
