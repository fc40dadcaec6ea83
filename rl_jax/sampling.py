"""Jit-compiled autoregressive sampling with a KV cache.

Prompts are left-padded to a common length (`prompt_mask` marks real tokens); positions count real
tokens only, so each row sees exactly its own prompt. Returns the completion tokens, their mask
(0 after the first stop token, which itself is kept and masked 1) and the sampler's log-probs of
the chosen tokens under the distribution it actually sampled from (after temperature, top-k and
top-p): the rollout log-probs μ used by mismatch corrections.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.checks import check_sampling_args, check_token_ids
from rl_jax.models.config import ModelConfig
from rl_jax.decode import (DecodeCache, DecodeWeights, decode_cache_from, decode_step, decode_weights, grow_cache,
                           repeat_rows, resolve_cpu_kernels)
from rl_jax.models.llama import default_positions, forward_with_cache, init_cache, sampler_dtype

Array = jax.Array


class Samples(NamedTuple):
  tokens: Array   # [B, N] int32 completion tokens (pad_id after a stop)
  mask: Array     # [B, N] float32, 1 on generated tokens up to and including the first stop token
  logp: Array     # [B, N] float32 sampler log-probs of the chosen tokens (0 where mask is 0)


def filter_logits(logits: Array, *, temperature: float, top_k: int, top_p: float) -> Array:
  """Temperature scaling, then top-k and nucleus (top-p) filtering; removed entries get −inf.

  Nucleus: in descending order, a token is kept while the probability mass before it is below
  `top_p` (so the token that crosses `top_p` is kept). Tokens tied with the last kept logit are kept
  too. See `nucleus_threshold` for how it avoids sorting the vocabulary.
  """
  logits = logits / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    logits = jnp.where(logits < nucleus_threshold(logits, top_p), -jnp.inf, logits)
  return logits


NUCLEUS_CANDIDATES = 256


def _nucleus_from_sorted(desc: Array, log_z: Array, top_p: float) -> tuple[Array, Array]:
  """(smallest kept logit [..., 1], number kept [...]) from logits sorted in descending order (all or a prefix)."""
  p = jnp.exp(desc - log_z)
  keep = (jnp.cumsum(p, axis=-1) - p) < top_p
  n = jnp.maximum(jnp.sum(keep, axis=-1), 1)
  return jnp.take_along_axis(desc, (n - 1)[..., None], axis=-1), n


def nucleus_threshold(logits: Array, top_p: float, *, candidates: int = NUCLEUS_CANDIDATES) -> Array:
  """The smallest logit of the top-p nucleus of each row of `logits` [..., V], as [..., 1] (Holtzman et al.,
  arXiv 1904.09751).

  A full sort of the vocabulary costs ~0.6 s per decode step for 50 rows × 49k tokens on a 2-core
  CPU, so the nucleus is first looked for among the `candidates` largest logits (`lax.top_k`, with the
  exact full-vocabulary normaliser). That answer is exact whenever the nucleus ends inside the
  candidates; if any row's nucleus is larger, the whole batch falls back to the full sort.
  """
  v = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  if candidates >= v:
    return _nucleus_from_sorted(-jnp.sort(-logits, axis=-1), log_z, top_p)[0]
  top = jax.lax.top_k(logits, candidates)[0]
  thresh, n = _nucleus_from_sorted(top, log_z, top_p)
  inside = jnp.all(n < candidates)
  return jax.lax.cond(inside, lambda: thresh,
                      lambda: _nucleus_from_sorted(-jnp.sort(-logits, axis=-1), log_z, top_p)[0])


CDF_BLOCK = 256


def _pick(p: Array, target: Array) -> Array:
  """Index [B] of the entry of non-negative masses p [B, n] where the running sum first exceeds target [B]
  (clipped to the last positive entry, so a rounding overshoot never lands on a zero-mass entry)."""
  c = jnp.cumsum(p, axis=-1)
  idx = jnp.sum(c <= target[:, None], axis=-1)
  last = p.shape[-1] - 1 - jnp.argmax((p > 0)[:, ::-1], axis=-1)
  return jnp.minimum(idx, last).astype(jnp.int32)


def inverse_cdf(logits: Array, log_z: Array, u: Array) -> Array:
  """Index [B] drawn from softmax(logits [B, V]) by inverting the CDF at u [B] ~ U[0, 1) (−inf entries have
  mass 0). Two levels: the block of `CDF_BLOCK` entries holding the target mass, then the entry inside it,
  so each row needs one uniform instead of a Gumbel draw per vocabulary entry."""
  b, v = logits.shape
  nb = -(-v // CDF_BLOCK)
  p = jnp.exp(jnp.pad(logits, ((0, 0), (0, nb * CDF_BLOCK - v)), constant_values=-jnp.inf) - log_z[:, None])
  p = p.reshape(b, nb, CDF_BLOCK)
  mass = jnp.sum(p, axis=-1)                                                # [B, nb]
  blk = _pick(mass, u * jnp.sum(mass, axis=-1))
  before = jnp.sum(jnp.where(jnp.arange(nb)[None] < blk[:, None], mass, 0.0), axis=-1)
  inner = jnp.take_along_axis(p, blk[:, None, None], axis=1)[:, 0]           # [B, CDF_BLOCK]
  inner_mass = jnp.sum(inner, axis=-1)
  rest = (u * jnp.sum(mass, axis=-1) - before) / jnp.take_along_axis(mass, blk[:, None], 1)[:, 0] * inner_mass
  return blk * CDF_BLOCK + _pick(inner, rest)


def _sample_full(logits: Array, u: Array) -> tuple[Array, Array]:
  """(token, log-prob) drawn from softmax(logits [B, V]) over the whole vocabulary (−inf entries excluded)."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  token = inverse_cdf(logits, log_z, u)
  return token, jnp.take_along_axis(logits, token[:, None], -1)[:, 0] - log_z


def _candidate_threshold(vals: Array, z: Array, top_k: int, top_p: float) -> tuple[Array, Array]:
  """(smallest kept logit [B, 1], whether every row's kept set lies inside the candidates) from the C largest
  scaled logits `vals` [B, C] (descending) of z [B, V], with `filter_logits`'s top-k then top-p rule."""
  c = vals.shape[-1]
  inside = jnp.asarray(True)
  if top_k:
    thresh = vals[:, top_k - 1:top_k]
    log_z = jax.nn.logsumexp(jnp.where(vals >= thresh, vals, -jnp.inf), axis=-1, keepdims=True)
  else:
    thresh = jnp.full_like(vals[:, :1], -jnp.inf)
    log_z = jax.nn.logsumexp(z, axis=-1, keepdims=True)
  if top_p < 1.0:
    thresh, n = _nucleus_from_sorted(jnp.where(vals >= thresh, vals, -jnp.inf), log_z, top_p)
    inside = jnp.all(n < c) if not top_k else inside
  kept = jnp.sum(z >= thresh, axis=-1)                 # ties with the threshold outside the candidates
  return thresh, inside & jnp.all(kept <= c)


def sample_tokens(logits: Array, u: Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0
                  ) -> tuple[Array, Array]:
  """(token [B], log-prob [B]) of the next token from logits [B, V], one uniform u [B] per row; the log-prob is
  exact under the distribution sampled from: `filter_logits`(logits) renormalised (greedy: argmax and the
  log-softmax of the raw logits).

  With top-k/top-p the kept set is found among the C = top_k (or `NUCLEUS_CANDIDATES`) largest logits and the
  draw is made among them; when some row's kept set is larger, the batch falls back to the full vocabulary.
  """
  if temperature == 0.0:
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return token, jnp.take_along_axis(logits, token[:, None], -1)[:, 0] - jax.nn.logsumexp(logits, axis=-1)
  z = logits / temperature
  v = z.shape[-1]
  if not (top_k and top_k < v) and top_p >= 1.0:
    return _sample_full(z, u)
  c = min(top_k if top_k and top_k < v else NUCLEUS_CANDIDATES, v)
  vals, idx = jax.lax.top_k(z, c)
  thresh, inside = _candidate_threshold(vals, z, top_k if top_k < v else 0, top_p)

  def among_candidates():
    kept = jnp.where(vals >= thresh, vals, -jnp.inf)
    log_z = jax.nn.logsumexp(kept, axis=-1)
    pos = _pick(jnp.exp(kept - log_z[:, None]), u * jnp.sum(jnp.exp(kept - log_z[:, None]), axis=-1))
    return (jnp.take_along_axis(idx, pos[:, None], -1)[:, 0].astype(jnp.int32),
            jnp.take_along_axis(kept, pos[:, None], -1)[:, 0] - log_z)

  return jax.lax.cond(inside, among_candidates,
                      lambda: _sample_full(filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), u))


def entropy_temperature_factor(logits: Array, stats: Array, tau: float) -> Array:
  """HAPO adaptive temperature: the factor [B] by which each row's temperature is multiplied this step.

    e = log max(H(softmax(z)), 1e-6),  h = (e − m)/(s + 1e-6),  ĥ = clip(h·k₊ if h > 0 else h·k₋, −1, 1),
    T' = T · (1 + τ ĥ),   stats = (m, s, k₊, k₋)

  "From Uniform to Heterogeneous" (HAPO), arXiv 2509.16591; the formula and τ = 0.05 from the official
  sampler (compute_entropy_based_temperature), H from the raw logits before temperature. Where its statistics
  come from is not in the released code: `rl_jax.objectives.entropy_temperature_stats` derives them from a
  training batch's token entropies ([reconstruction])."""
  z = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(z, axis=-1)
  e = jnp.log(jnp.maximum(-jnp.sum(jnp.exp(logp) * logp, axis=-1), 1e-6))
  m, s, k_pos, k_neg = (stats[i] for i in range(4))
  h = (e - m) / (s + 1e-6)
  return 1.0 + tau * jnp.clip(jnp.where(h > 0, h * k_pos, h * k_neg), -1.0, 1.0)


def row_uniforms(row_keys: Array, step: Array) -> Array:
  """One U[0, 1) draw per row for decode step `step`: uniform(fold_in(row key, step)), so a row's draws depend
  only on its own key (the static and the continuous-batching samplers agree row by row)."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step), ()))(row_keys)


STATIC_ARGS = ("cfg", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens", "pad_id", "group_size",
               "decode_block", "dtype", "temperature_tau", "cpu_kernels")
DECODE_BLOCK = 64


def prefill(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, dtype=None
            ) -> tuple[Array, DecodeCache]:
  """Last-position logits [B, V] and the decode-layout cache (exactly P slots) of left-padded prompts [B, P]."""
  b, p = prompts.shape
  cache = init_cache(cfg, b, p, jnp.float32 if dtype is None else dtype)
  logits, cache = forward_with_cache(params, prompts, cfg, cache, 0, default_positions(prompt_mask), prompt_mask,
                                     last_only=True)
  return logits[:, -1], decode_cache_from(cache)


def decode_buckets(max_new_tokens: int, block: int) -> list[tuple[int, int]]:
  """[start, stop) step ranges; during a range the cache holds P + stop slots (attention reads no more)."""
  return [(s, min(s + block, max_new_tokens)) for s in range(0, max_new_tokens, block)]


class DecodeCarry(NamedTuple):
  """Per-row state of the static sampler between decode steps (every leaf has the batch axis first)."""
  logits: Array       # [B, V] next-token logits
  cache: DecodeCache  # the decode-layout KV cache, P + (slots of the current bucket)
  key_valid: Array    # [B, P + filled] bool: the cache slots each row may attend
  done: Array         # [B] bool: the row has drawn a stop token
  row_keys: Array     # [B] the row's PRNG key (`row_uniforms`)
  next_pos: Array     # [B] int32 real prompt tokens of the row (its first new position)


def _check_generate_args(cfg: ModelConfig, p: int, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                         stop_tokens, pad_id: int, group_size: int, decode_block: int, temperature_tau: float):
  check_sampling_args(cfg.vocab_size, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      stop_tokens=stop_tokens, pad_id=pad_id)
  if p + max_new_tokens > cfg.max_seq_len:
    raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} exceeds the model's cache/context "
                     f"max_seq_len={cfg.max_seq_len}.")
  if group_size < 1 or decode_block < 1:
    raise ValueError(f"group_size and decode_block must be >= 1, got {group_size}, {decode_block}.")
  if not 0.0 <= temperature_tau < 1.0:
    raise ValueError(f"temperature_tau must lie in [0, 1), got {temperature_tau}.")


def start_decode(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, rng: Array, *, group_size: int,
                 dtype, cpu_kernels: bool | None) -> tuple[DecodeWeights, DecodeCarry]:
  """The decode weights and the carry after prefill: each prompt prefilled once, its cache repeated for its G rows
  (rows i·G … i·G + G − 1), row r's key `jax.random.split(rng, B·G)[r]`."""
  b = prompts.shape[0]
  prompt_mask = prompt_mask.astype(jnp.int32)
  dtype = sampler_dtype(cfg) if dtype is None else dtype
  cast = params if dtype is None else jax.tree.map(lambda a: a.astype(dtype), params)
  logits, cache = repeat_rows(prefill(cast, cfg, prompts, prompt_mask, dtype), group_size)
  prompt_mask = repeat_rows(prompt_mask, group_size)
  w = decode_weights(cast, cfg, cpu_kernels=resolve_cpu_kernels(cpu_kernels))
  return w, DecodeCarry(logits, cache, prompt_mask.astype(bool), jnp.zeros((b * group_size,), bool),
                        jax.random.split(rng, b * group_size), jnp.sum(prompt_mask, axis=1))


def decode_bucket(w: DecodeWeights, cfg: ModelConfig, carry: DecodeCarry, *, start: int, stop: int, p: int,
                  temperature: float, top_k: int, top_p: float, stop_tokens: Sequence[int], pad_id: int,
                  temperature_stats=None, temperature_tau: float = 0.0) -> tuple[DecodeCarry, tuple]:
  """Decode steps [start, stop) of every row of `carry` with the cache grown to P + stop slots; returns the carry
  and (tokens, mask, logp), each [stop − start, B]. A row only reads its own carry entries, so any subset of rows
  decoded on its own gives the same rows."""
  adapt = temperature_stats is not None and temperature_tau > 0
  stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

  def step(state, i):
    last_logits, cache, key_valid, done = state
    if adapt:
      last_logits = last_logits / entropy_temperature_factor(last_logits, temperature_stats, temperature_tau)[:, None]
    token, logp = sample_tokens(last_logits, row_uniforms(carry.row_keys, i), temperature=temperature, top_k=top_k,
                                top_p=top_p)
    live = ~done
    token = jnp.where(live, token, pad_id)
    key_valid = jax.lax.dynamic_update_slice(key_valid, live[:, None], (0, p + i))
    logits, cache = decode_step(w, cfg, cache, token, carry.next_pos + i, p + i, key_valid)
    done = done | (live & jnp.any(token[:, None] == stops[None, :], axis=-1))
    return (logits, cache, key_valid, done), (token, live.astype(jnp.float32), jnp.where(live, logp, 0.0))

  key_valid = jnp.pad(carry.key_valid, ((0, 0), (0, p + stop - carry.key_valid.shape[1])))
  state = (carry.logits, grow_cache(carry.cache, p + stop), key_valid, carry.done)
  (logits, cache, key_valid, done), out = jax.lax.scan(step, state, jnp.arange(start, stop))
  return carry._replace(logits=logits, cache=cache, key_valid=key_valid, done=done), out


def generate_raw(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, rng: Array, *, max_new_tokens: int,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop_tokens: Sequence[int] = (),
                 pad_id: int = 0, group_size: int = 1, decode_block: int = DECODE_BLOCK, dtype=None,
                 temperature_stats=None, temperature_tau: float = 0.0, cpu_kernels: bool | None = None) -> Samples:
  """Samples `max_new_tokens` tokens per row (temperature 0 = greedy argmax).

  Args:
    prompts: [B, P] int32, left-padded; prompt_mask: [B, P], 1 on real prompt tokens.
    stop_tokens: tuple of token ids that end a row (e.g. EOS); later tokens are pad_id and masked 0.
    group_size: G samples per prompt: the output has B·G rows (prompt i → rows i·G … i·G + G − 1); each
      prompt is prefilled once and its cache shared by its G rows.
    decode_block: the cache grows by this many slots at a time (attention reads the filled prefix rounded up).
    dtype: weights and KV cache dtype of the sampler (None: cfg.dtype when it is bfloat16, else the parameters'
      own); logits, attention softmax and sampling stay float32.
    temperature_stats, temperature_tau: HAPO's adaptive temperature (`entropy_temperature_factor`; stats [4]
      traced, 0 <= τ < 1 static); None or τ = 0 samples at the fixed temperature.
    cpu_kernels: the decode projections through rl_jax's CPU kernel (`rl_jax.decode.resolve_cpu_kernels`; None:
      when this process has a single CPU device, `generate` also when the parameters sit on one CPU device;
      float32 weights only). False: XLA's matmuls.
  Row r's randomness is `jax.random.split(rng, B·G)[r]` folded with the step index (see `row_uniforms`).
  Every row runs every step (traceable inside a caller's jit). `generate(..., shrink=True)` (the default) drops
  finished rows between buckets and ends once every row has stopped (`generate_shrinking`, same rows);
  shrink=False runs this function under one jit.
  """
  p = prompts.shape[1]
  _check_generate_args(cfg, p, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, group_size,
                       decode_block, temperature_tau)
  w, carry = start_decode(params, cfg, prompts, prompt_mask, rng, group_size=group_size, dtype=dtype,
                          cpu_kernels=cpu_kernels)
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=tuple(stop_tokens), pad_id=pad_id,
                  temperature_stats=temperature_stats, temperature_tau=temperature_tau)
  outs = []
  for start, stop in decode_buckets(max_new_tokens, decode_block):
    carry, out = decode_bucket(w, cfg, carry, start=start, stop=stop, p=p, **sampling)
    outs.append(out)
  tokens, mask, logp = (jnp.concatenate(x, axis=0).T for x in zip(*outs))
  return Samples(tokens, mask, logp)


_generate_jit = jax.jit(generate_raw, static_argnames=STATIC_ARGS)


def row_sizes(b: int) -> list[int]:
  """The batch sizes a shrinking sampler of b rows may run at: 1, 2, 3, 4, 6, 8, 12, 16, … (powers of two and 1.5×
  them) below b, and b; each size costs one compile per bucket, and a size wastes under a third of its rows."""
  sizes, k = {b}, 1
  while k < b:
    sizes.update(s for s in (k, 3 * k // 2) if 0 < s < b)
    k *= 2
  return sorted(sizes)


def shrunk_rows(done: np.ndarray, sizes: Sequence[int]) -> np.ndarray | None:
  """Indices (ascending) of the rows to keep: every live row, padded with finished rows up to the smallest size
  in `sizes` that holds the live rows; None when that size is the current batch (nothing to drop)."""
  live = np.flatnonzero(~done)
  size = min(s for s in sizes if s >= len(live))
  if size >= len(done):
    return None
  return np.sort(np.concatenate([live, np.flatnonzero(done)[:size - len(live)]]))


_start_jit = jax.jit(start_decode, static_argnames=("cfg", "group_size", "dtype", "cpu_kernels"))
_bucket_jit = jax.jit(decode_bucket, static_argnames=("cfg", "start", "stop", "p", "temperature", "top_k", "top_p",
                                                      "stop_tokens", "pad_id", "temperature_tau"))
_take_rows = jax.jit(lambda carry, rows: jax.tree.map(lambda a: a[rows], carry))


def generate_shrinking(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, rng: Array, *,
                       max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       stop_tokens: Sequence[int] = (), pad_id: int = 0, group_size: int = 1,
                       decode_block: int = DECODE_BLOCK, dtype=None, temperature_stats=None,
                       temperature_tau: float = 0.0, cpu_kernels: bool | None = None) -> Samples:
  """`generate_raw` (same arguments, same rows) driven from the host bucket by bucket: before each bucket the
  rows that have drawn a stop token are dropped, the live ones compacted into the smallest `row_sizes` batch
  that holds them (padded with finished rows), and sampling ends once every row has stopped.

  A decode step's cost falls with the batch (the weights are read once per step whatever the batch), and with
  long-tailed completion lengths most rows stop well before the longest. Each row keeps its key, positions,
  cache and step index, so its tokens and log-probs are those of the full batch. Concrete arrays only (it
  reads `done` on the host between buckets); at most len(row_sizes(B·G)) compiles per bucket.
  """
  b, p = prompts.shape
  _check_generate_args(cfg, p, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, group_size,
                       decode_block, temperature_tau)
  w, carry = _start_jit(params, cfg, prompts, prompt_mask, rng, group_size=group_size, dtype=dtype,
                        cpu_kernels=cpu_kernels)
  n = b * group_size
  sizes = row_sizes(n)
  rows = np.arange(n)
  out = (np.full((n, max_new_tokens), pad_id, np.int32), np.zeros((n, max_new_tokens), np.float32),
         np.zeros((n, max_new_tokens), np.float32))
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=tuple(stop_tokens), pad_id=pad_id,
                  temperature_stats=temperature_stats, temperature_tau=temperature_tau)
  for start, stop in decode_buckets(max_new_tokens, decode_block):
    done = np.asarray(carry.done)
    if done.all():
      break
    keep = shrunk_rows(done, sizes)
    if keep is not None:
      carry, rows = _take_rows(carry, jnp.asarray(keep, jnp.int32)), rows[keep]
    carry, bucket = _bucket_jit(w, cfg, carry, start=start, stop=stop, p=p, **sampling)
    for full, part in zip(out, bucket):
      full[rows, start:stop] = np.asarray(part).T
  return Samples(*map(jnp.asarray, out))


@functools.wraps(generate_raw)
def generate(params: dict, cfg: ModelConfig, prompts: Array, prompt_mask: Array, rng: Array, *, shrink: bool = True,
             **kw) -> Samples:
  check_token_ids("prompts", prompts, cfg.vocab_size)   # concrete prompts only: jit cannot look inside
  kw["cpu_kernels"] = kernels_for_arrays(kw.get("cpu_kernels"), params)
  if shrink:
    return generate_shrinking(params, cfg, prompts, prompt_mask, rng, **kw)
  return _generate_jit(params, cfg, prompts, prompt_mask, rng, **kw)


def kernels_for_arrays(cpu_kernels: bool | None, tree) -> bool | None:
  """`cpu_kernels` resolved from concrete arrays: None → whether every leaf sits on the same single CPU device
  (and the kernel library loads); an explicit value, or traced leaves, pass through."""
  leaves = jax.tree.leaves(tree)
  if cpu_kernels is not None or not leaves or not all(isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
                                                       for a in leaves):
    return cpu_kernels
  devices = set().union(*(a.sharding.device_set for a in leaves))
  return resolve_cpu_kernels(None, devices)
