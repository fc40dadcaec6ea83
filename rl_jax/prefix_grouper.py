"""Prefix Grouper: encode a group's shared prompt once, then its G completions against that prompt's
keys/values (shared-prefix forward). Forward log-probs and gradients equal the standard forward on
G copies of prompt + completion, because causal attention makes the prompt's states independent of
the completions, and the gradient through the one shared copy is the sum of the G copies' gradients.

"Prefix Grouper: Efficient GRPO Training through Shared-Prefix Forward", arXiv 2506.05433.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import KVCache, forward_with_cache, init_cache

Array = jax.Array


def grouped_logprobs(params: dict, cfg: ModelConfig, prefix: Array, suffixes: Array, suffix_mask: Array) -> Array:
  """Log-probs [G, Ls] of each completion's tokens given one shared, unpadded prompt.

  Args:
    prefix: [Lp] int32 prompt tokens (no padding).
    suffixes: [G, Ls] int32 completions (right-padded); suffix_mask [G, Ls] marks real tokens.
  The prompt runs once (batch 1); its per-layer K/V are broadcast to the G completions, which run at
  positions Lp.. with a key mask [prompt ; own completion]. The logit at the prompt's last position
  scores every completion's first token.
  """
  lp = prefix.shape[0]
  g, ls = suffixes.shape
  if lp + ls > cfg.max_seq_len:
    raise ValueError(f"prompt {lp} + completion {ls} tokens exceed max_seq_len={cfg.max_seq_len}.")
  s_max = lp + ls
  cache = init_cache(cfg, 1, s_max)
  valid_prefix = jnp.concatenate([jnp.ones((1, lp), jnp.int32), jnp.zeros((1, ls), jnp.int32)], axis=1)
  prefix_logits, cache = forward_with_cache(params, prefix[None], cfg, cache, 0, jnp.arange(lp)[None], valid_prefix)
  shared = KVCache(jnp.broadcast_to(cache.k, (cfg.n_layers, g) + cache.k.shape[2:]),
                   jnp.broadcast_to(cache.v, (cfg.n_layers, g) + cache.v.shape[2:]))
  key_valid = jnp.concatenate([jnp.ones((g, lp), jnp.int32), suffix_mask.astype(jnp.int32)], axis=1)
  positions = jnp.broadcast_to(lp + jnp.arange(ls)[None], (g, ls))
  suffix_logits, _ = forward_with_cache(params, suffixes, cfg, shared, lp, positions, key_valid)
  first = jnp.broadcast_to(prefix_logits[:, -1], (g, prefix_logits.shape[-1]))[:, None]       # [G, 1, V]
  logits = jnp.concatenate([first, suffix_logits[:, :-1]], axis=1)                             # predicts suffixes
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), suffixes[..., None], -1)[..., 0]
  return logp * suffix_mask
