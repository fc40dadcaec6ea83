"""Continuous batching: a fixed number of decode slots; a finished row's slot takes the next prompt.

The static sampler (`rl_jax.sampling.generate`) runs every row for the whole `max_new_tokens` loop, so
with long-tailed completion lengths many slot-steps decode rows that have already stopped. Here each
of `slots` decode rows holds one prompt at a time; as soon as a row draws a stop token (or reaches
`max_new_tokens`) its slot is refilled by prefilling the next pending prompt into it (Orca's
iteration-level scheduling, Yu et al., OSDI 2022; vLLM, arXiv 2309.06180).

Row r draws with `jax.random.split(rng, N)[r]` folded with its own step index, exactly as the static
sampler does, so each row's tokens and log-probs equal the static sampler's for the same `rng`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from rl_jax.checks import check_sampling_args
from rl_jax.decode import DecodeCache, decode_step, decode_weights, resolve_cpu_kernels
from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import sampler_dtype
from rl_jax.sampling import Samples, kernels_for_arrays, prefill, row_uniforms, sample_tokens

Array = jax.Array


class SlotState(NamedTuple):
  cache: DecodeCache   # L × [S, K, hd, P + N] / [S, K, P + N, hd]
  logits: Array        # [S, V] next-token logits of each slot
  key_valid: Array     # [S, P + N] bool
  row: Array           # [S] int32 prompt row held by the slot (N = none)
  step: Array          # [S] int32 tokens drawn so far by the slot's row
  n_real: Array        # [S] int32 real prompt tokens of the slot's row (its first new position)
  done: Array          # [S] bool: the slot is free
  next_row: Array      # [] int32 first prompt not yet started
  out: Samples         # [N + 1, max_new_tokens] outputs (row N absorbs the writes of free slots)


def _fill_slot(params, cfg, state: SlotState, prompts: Array, prompt_mask: Array, dtype) -> SlotState:
  """Prefills prompt `state.next_row` into the first free slot."""
  slot = jnp.argmax(state.done)
  r = state.next_row
  ids = jax.lax.dynamic_slice_in_dim(prompts, r, 1)
  mask = jax.lax.dynamic_slice_in_dim(prompt_mask, r, 1)
  logits, small = prefill(params, cfg, ids, mask, dtype)
  put = lambda big, new: jax.lax.dynamic_update_slice(big, new.astype(big.dtype), (slot, 0, 0, 0))
  cache = DecodeCache(tuple(map(put, state.cache.k, small.k)), tuple(map(put, state.cache.v, small.v)))
  valid = jnp.zeros_like(state.key_valid[0]).at[:prompts.shape[1]].set(mask[0].astype(bool))
  return state._replace(cache=cache, logits=state.logits.at[slot].set(logits[0]),
                        key_valid=state.key_valid.at[slot].set(valid), row=state.row.at[slot].set(r),
                        step=state.step.at[slot].set(0), n_real=state.n_real.at[slot].set(jnp.sum(mask)),
                        done=state.done.at[slot].set(False), next_row=r + 1)


def _decode_tick(w, cfg, state: SlotState, row_keys: Array, p: int, max_new_tokens: int, stops: Array, pad_id: int,
                 sampling: dict) -> SlotState:
  """Every busy slot draws one token (its row's key at its own step), then one decode step for all slots."""
  n = row_keys.shape[0] - 1
  live = ~state.done
  keys = row_keys[jnp.where(live, state.row, n)]
  token, logp = sample_tokens(state.logits, jax.vmap(lambda k, s: row_uniforms(k[None], s)[0])(keys, state.step),
                              **sampling)
  token = jnp.where(live, token, pad_id)
  row, col = jnp.where(live, state.row, n), jnp.minimum(state.step, max_new_tokens - 1)
  out = Samples(state.out.tokens.at[row, col].set(token), state.out.mask.at[row, col].set(live.astype(jnp.float32)),
                state.out.logp.at[row, col].set(jnp.where(live, logp, 0.0)))
  slot = p + col
  key_valid = state.key_valid.at[jnp.arange(token.shape[0]), slot].set(live)
  logits, cache = decode_step(w, cfg, state.cache, token, state.n_real + col, slot, key_valid)
  step = state.step + live
  done = state.done | (live & jnp.any(token[:, None] == stops[None, :], axis=-1)) | (step >= max_new_tokens)
  return state._replace(cache=cache, logits=logits, key_valid=key_valid, step=step, done=done, out=out)


def generate_continuous_raw(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, rng: Array, *,
                            slots: int, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                            top_p: float = 1.0, stop_tokens: Sequence[int] = (), pad_id: int = 0, dtype=None,
                            cpu_kernels: bool | None = None) -> Samples:
  """`rl_jax.sampling.generate` for N prompts [N, P] (left-padded) through `slots` decode rows, refilled as rows
  finish. Returns the same [N, max_new_tokens] Samples as the static sampler with the same rng (cpu_kernels as
  there)."""
  check_sampling_args(cfg.vocab_size, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      stop_tokens=stop_tokens, pad_id=pad_id)
  n, p = prompts.shape
  if p + max_new_tokens > cfg.max_seq_len:
    raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} exceeds the model's cache/context "
                     f"max_seq_len={cfg.max_seq_len}.")
  if slots < 1:
    raise ValueError(f"slots must be >= 1, got {slots}.")
  slots = min(slots, n)
  dtype = sampler_dtype(cfg) if dtype is None else dtype
  cast = params if dtype is None else jax.tree.map(lambda a: a.astype(dtype), params)
  w = decode_weights(cast, cfg, cpu_kernels=resolve_cpu_kernels(cpu_kernels))
  row_keys = jnp.concatenate([jax.random.split(rng, n), jax.random.split(rng, 1)])
  stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
  s_len = p + max_new_tokens
  cache_dtype = jnp.float32 if dtype is None else dtype
  zeros = lambda *shape: jnp.zeros((cfg.n_layers, slots) + shape, cache_dtype)
  k, v = zeros(cfg.n_kv_heads, cfg.head_dim, s_len), zeros(cfg.n_kv_heads, s_len, cfg.head_dim)
  state = SlotState(
      DecodeCache(tuple(k), tuple(v)), jnp.zeros((slots, cfg.vocab_size), jnp.float32),
      jnp.zeros((slots, s_len), bool), jnp.full((slots,), n, jnp.int32), jnp.zeros((slots,), jnp.int32),
      jnp.zeros((slots,), jnp.int32), jnp.ones((slots,), bool), jnp.asarray(0, jnp.int32),
      Samples(jnp.full((n + 1, max_new_tokens), pad_id, jnp.int32), jnp.zeros((n + 1, max_new_tokens), jnp.float32),
              jnp.zeros((n + 1, max_new_tokens), jnp.float32)))
  prompt_mask = prompt_mask.astype(jnp.int32)
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)

  def refill(state):
    return jax.lax.while_loop(lambda s: jnp.any(s.done) & (s.next_row < n),
                              lambda s: _fill_slot(cast, cfg, s, prompts, prompt_mask, dtype), state)

  def tick(state):
    return _decode_tick(w, cfg, refill(state), row_keys, p, max_new_tokens, stops, pad_id, sampling)

  state = jax.lax.while_loop(lambda s: jnp.any(~s.done) | (s.next_row < n), tick, state)
  return Samples(*(x[:n] for x in state.out))


STATIC_ARGS = ("cfg", "slots", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens", "pad_id", "dtype",
               "cpu_kernels")
_generate_continuous_jit = jax.jit(generate_continuous_raw, static_argnames=STATIC_ARGS)


@functools.wraps(generate_continuous_raw)
def generate_continuous(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, rng: Array,
                        **kw) -> Samples:
  kw["cpu_kernels"] = kernels_for_arrays(kw.get("cpu_kernels"), params)
  return _generate_continuous_jit(params, cfg, prompts, prompt_mask, rng, **kw)
