"""Shared inputs for objective tests: random batches and the table of methods under test."""

import jax
import jax.numpy as jnp
import numpy as np

B, T, GROUP = 6, 7, 2
LENGTHS = (7, 5, 0, 3, 6, 1)  # includes an empty row


def make_batch(seed=0, b=B, t=T, lengths=LENGTHS, spread=0.3, seq_adv=True):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 3.0, (b, t))
  old = logp + rng.normal(0.0, spread, (b, t))
  ref = logp + rng.normal(0.0, spread, (b, t))
  adv = rng.normal(size=(b,)) if seq_adv else rng.normal(size=(b, t))
  mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)
  extras = {
      "entropy": rng.uniform(0.01, 2.5, (b, t)),
      "token_ids": rng.integers(0, 3, (b, t)).astype(np.int32),
      "segment_ids": np.repeat(np.arange((t + 1) // 2), 2)[None, :t].repeat(b, 0).astype(np.int32),
      "rollout_logp": old + rng.normal(0.0, 0.2, (b, t)),
  }
  return logp, old, ref, adv, mask, extras


# name -> keyword arguments that the method needs besides the common ones (built from `extras`).
def method_kwargs(name, extras, b=B):
  kw = {}
  if name in ("hapo", "gtpo", "steer", "spine"):
    kw["entropy"] = extras["entropy"]
  if name == "disco":
    kw["group_size"] = GROUP
  if name == "dhpo":
    kw.update(mixing="entropy", entropy=extras["entropy"])
  if name == "sspo":
    kw.update(segment_ids=extras["segment_ids"], entropy=extras["entropy"])
  if name == "rank_grpo":
    kw["rank_ids"] = extras["segment_ids"]
  if name == "gtpo":
    kw.update(token_ids=extras["token_ids"], group_size=GROUP, ent_threshold=5.0)
  if name == "clip_cov":
    kw.update(rng=jax.random.PRNGKey(0), clip_cov_ratio=1.0, clip_cov_lb=-1e9, clip_cov_ub=1e9)
  if name in ("tis", "mis", "minirl"):
    kw["rollout_logp"] = extras["rollout_logp"]
  if name == "dr_grpo":
    kw["max_len"] = 16
  return kw


def as_f32(*xs):
  return tuple(jnp.asarray(x, jnp.float32) for x in xs)
