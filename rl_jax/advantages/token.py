"""Token-level returns and batch-global normalisation: REINFORCE++, REINFORCE++-baseline, GAE."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards, check_tokens, register
from rl_jax.checks import check_hparam

Array = jax.Array
NORMS = ("openrlhf", "verl")


def masked_whiten(x: Array, mask: Array, *, unbiased: bool = True, eps: float = 1e-8, shift_mean: bool = True) -> Array:
  """(x − μ)·rsqrt(var + eps) over the valid tokens of the whole batch (verl `masked_whiten`).

  Token-weighted: long responses weigh more. `unbiased` uses S/(S−1) (verl); with S ≤ 1 valid tokens the
  variance is taken as 0. Returns 0 on masked tokens.
  """
  s = jnp.sum(mask)
  mu = jnp.sum(x * mask) / jnp.maximum(s, 1.0)
  var = jnp.sum(jnp.square(x - mu) * mask) / jnp.maximum(s, 1.0)
  if unbiased:
    var = jnp.where(s > 1, var * s / jnp.maximum(s - 1.0, 1.0), 0.0)
  centred = x - mu if shift_mean else x
  return centred * jax.lax.rsqrt(var + eps) * mask


def _global_norm(x: Array, mask: Array, norm: str) -> Array:
  if norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")
  if norm == "verl":
    return masked_whiten(x, mask, unbiased=True, eps=1e-8)
  s = jnp.maximum(jnp.sum(mask), 1.0)
  mu = jnp.sum(x * mask) / s
  var = jnp.sum(jnp.square(x - mu) * mask) / s
  return (x - mu) * jax.lax.rsqrt(jnp.maximum(var, 1e-8)) * mask


def last_token_indicator(mask: Array) -> Array:
  """1 at each row's last valid token ([..., T])."""
  t = mask.shape[-1]
  idx = jnp.arange(t).reshape((1,) * (mask.ndim - 1) + (t,))
  last = jnp.max(jnp.where(mask > 0, idx, -1), axis=-1, keepdims=True)
  return ((idx == last) & (mask > 0)).astype(jnp.float32)


def discounted_returns(rewards: Array, mask: Array, gamma: float) -> Array:
  """G_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'} over valid tokens (masked tokens carry the return through)."""
  def step(carry, xs):
    r, m = xs
    g = r * m + gamma * carry
    g = jnp.where(m > 0, g, carry)
    return g, g

  r_t = jnp.moveaxis(rewards, -1, 0)[::-1]
  m_t = jnp.moveaxis(mask, -1, 0)[::-1]
  _, out = jax.lax.scan(step, jnp.zeros(rewards.shape[:-1]), (r_t, m_t))
  return jnp.moveaxis(out[::-1], 0, -1) * mask


def _masked_kl(kl, mask: Array) -> Optional[Array]:
  """`kl` [P, G, T] as float32, 0 where mask is 0 (so padding may hold anything); None stays None."""
  if kl is None:
    return None
  if jnp.shape(kl) != mask.shape:
    raise ValueError(f"kl must have the shape of mask {mask.shape}, got {jnp.shape(kl)}.")
  return jnp.where(mask > 0, jnp.asarray(kl, jnp.float32), 0.0)


def _token_rewards(r: Array, mask: Array, kl: Optional[Array], beta: float, *, clamp: bool = True) -> Array:
  """R on each row's last valid token minus β·kl on every valid token (kl clamped to ±10 as OpenRLHF, if `clamp`)."""
  rew = r[..., None] * last_token_indicator(mask)
  kl = _masked_kl(kl, mask)
  if kl is not None:
    rew = rew - beta * (jnp.clip(kl, -10.0, 10.0) if clamp else kl)
  return rew


@register
def reinforce_pp(rewards, mask, *, kl=None, beta: float = 0.0, gamma: float = 1.0, norm: str = "openrlhf") -> Array:
  """REINFORCE++: discounted token returns of (outcome reward − β·KL), normalised over the whole batch.

    rew_t = −β kl_t + 1[t = last]·R,  G_t = Σ_{t'≥t} γ^{t'−t} rew_{t'},  A = (G − μ)/σ over all valid tokens.

  "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs", arXiv 2501.03262. Official code is
  OpenRLHF (kl clamped to ±10, population variance, rsqrt(max(var, 1e-8)), norm="openrlhf"); norm="verl" is
  verl's (kl as given, unbiased whitening). `kl` [P, G, T] is a per-token KL estimate. Returns [P, G, T].
  """
  check_hparam("beta", beta, low=0.0, method="reinforce_pp")
  check_hparam("gamma", gamma, low=0.0, high=1.0, method="reinforce_pp")
  r = check_rewards(rewards, method="reinforce_pp")
  _, m = check_tokens(jnp.zeros(jnp.shape(mask), jnp.int32), mask, r.shape, method="reinforce_pp")
  returns = discounted_returns(_token_rewards(r, m, kl, beta, clamp=norm != "verl"), m, gamma)
  return jax.lax.stop_gradient(_global_norm(returns, m, norm))


BASELINE_NORMS = ("openrlhf", "verl", "openrlhf_verl_whiten")


def _verl_baseline_scores(r: Array, m: Array, kl: Optional[Array], beta: float) -> Array:
  """verl's sequence score with the KL in the reward: s_i = R_i − β Σ_t m_t kl_t, minus its group mean."""
  kl = _masked_kl(kl, m)
  s = r if kl is None else r - beta * jnp.sum(kl, axis=-1)
  return s if s.shape[1] == 1 else s - s.mean(axis=1, keepdims=True)


@register
def reinforce_pp_baseline(rewards, mask, *, kl=None, beta: float = 0.0, norm: str = "openrlhf") -> Array:
  """REINFORCE++-baseline: group-mean-centred reward, then a batch-global normalisation (arXiv 2501.03262).

  norm="openrlhf" (OpenRLHF's form): s'_i = R_i − mean_G R (a one-sample group keeps R) on the last token,
    minus β·clamp(kl_t, ±10) on every token; γ = 1 returns (s'_i minus the KL that follows t), normalised
    with the population variance, rsqrt(max(var, 1e-8)).
  norm="verl" (verl 0.9.1 with the KL in the reward): s_i = R_i − β Σ_t kl_t is centred in its group,
    every valid token of row i gets s'_i, then unbiased whitening (x − μ)·rsqrt(var + 1e-8).
  norm="openrlhf_verl_whiten": OpenRLHF's returns with verl's whitening.
  With β = 0 or no kl the three differ only in the normalisation.
  """
  if norm not in BASELINE_NORMS:
    raise ValueError(f"Unknown norm {norm!r}; expected one of {BASELINE_NORMS}.")
  check_hparam("beta", beta, low=0.0, method="reinforce_pp_baseline")
  r = check_rewards(rewards, method="reinforce_pp_baseline")
  _, m = check_tokens(jnp.zeros(jnp.shape(mask), jnp.int32), mask, r.shape, method="reinforce_pp_baseline")
  if norm == "verl":
    return jax.lax.stop_gradient(masked_whiten(_verl_baseline_scores(r, m, kl, beta)[..., None] * m, m))
  centred = r if r.shape[1] == 1 else r - r.mean(axis=1, keepdims=True)
  returns = discounted_returns(_token_rewards(centred, m, kl, beta), m, 1.0)
  return jax.lax.stop_gradient(_global_norm(returns, m, "verl" if norm == "openrlhf_verl_whiten" else norm))


@register
def gae(rewards, values, mask, *, kl=None, beta: float = 0.0, gamma: float = 1.0, lam: float = 1.0,
        whiten: bool = True) -> tuple[Array, Array]:
  """Generalised advantage estimation over response tokens; returns (advantages, returns) [P, G, T].

    rew_t = −β kl_t + 1[t = last]·R,  δ_t = rew_t + γ V_{t+1} − V_t (V after the end = 0),
    A_t = δ_t + γλ A_{t+1},  returns = A + V;  advantages whitened over valid tokens (verl).

  Schulman et al., arXiv 1506.02438. Defaults follow verl's config (γ = λ = 1). Masked tokens inside a
  response are skipped: the next value and the running advantage are carried across them.
  """
  for name, value, high in (("beta", beta, None), ("gamma", gamma, 1.0), ("lam", lam, 1.0)):
    check_hparam(name, value, low=0.0, high=high, method="gae")
  r = check_rewards(rewards, method="gae")
  _, m = check_tokens(jnp.zeros(jnp.shape(mask), jnp.int32), mask, r.shape, method="gae")
  v = jnp.asarray(values, jnp.float32) * m
  rew = _token_rewards(r, m, kl, beta)

  def step(carry, xs):
    next_v, next_a = carry
    rt, vt, mt = xs
    delta = rt + gamma * next_v - vt
    a = delta + gamma * lam * next_a
    keep = mt > 0
    return (jnp.where(keep, vt, next_v), jnp.where(keep, a, next_a)), jnp.where(keep, a, 0.0)

  xs = tuple(jnp.moveaxis(x, -1, 0)[::-1] for x in (rew, v, m))
  zero = jnp.zeros(r.shape)
  _, adv = jax.lax.scan(step, (zero, zero), xs)
  adv = jnp.moveaxis(adv[::-1], 0, -1)
  returns = (adv + v) * m
  if whiten:
    adv = masked_whiten(adv, m)
  return jax.lax.stop_gradient(adv * m), jax.lax.stop_gradient(returns)


@register
def hapo_tlga(rewards, mask, *, eps: float = 1e-6, scale_by_std: bool = True, fallback: float = 5.0,
              check_padding: bool = True) -> Array:
  """HAPO's Token-Level Group Average: group statistics over the group's tokens, so a response counts by its length.

    s_{i,t} = R_i·m_{i,t},  μ_p, σ_p = mean and std (ddof 0) of s over the group's valid tokens,
    A_{i,t} = (s_{i,t} − μ_p)/(σ_p + eps);  a group with any |A| ≥ `fallback` takes GRPO's advantage instead.

  "From Uniform to Heterogeneous" (HAPO), arXiv 2509.16591; the rule and constants from the official code
  (compute_hapo_outcome_advantage): eps 1e-6, the fallback at 5 to GRPO (verl: unbiased std). The code tests
  |A| ≥ 5 at padded positions too (where s = 0, A = −μ/σ), which `check_padding=True` reproduces; False tests
  valid tokens only. `mask` [P, G, T] is the completion mask; returns [P, G, T] (0 on padding).
  Example: R = [1, 0], lengths [1, 3]: μ = 1/4, σ = √3/4 → A = [√3, −1/√3 (×3)].
  """
  from rl_jax.advantages.group import grpo
  check_hparam("eps", eps, low=0.0, method="hapo_tlga")
  check_hparam("fallback", fallback, low=0.0, strict=True, method="hapo_tlga")
  r = check_rewards(rewards, method="hapo_tlga")
  _, m = check_tokens(jnp.zeros(jnp.shape(mask), jnp.int32), mask, r.shape, method="hapo_tlga")
  s = r[..., None] * m
  n = jnp.maximum(m.sum(axis=(1, 2), keepdims=True), 1.0)
  mean = s.sum(axis=(1, 2), keepdims=True) / n
  std = jnp.sqrt((jnp.square(s - mean) * m).sum(axis=(1, 2), keepdims=True) / n)
  normed = (s - mean) / (std + eps) if scale_by_std else s - mean
  tested = normed if check_padding else normed * m
  use_grpo = jnp.any(jnp.abs(tested) >= fallback, axis=(1, 2), keepdims=True)
  group = grpo(r, eps=eps, scale_by_std=scale_by_std)[..., None]
  return jax.lax.stop_gradient(jnp.where(use_grpo, group, normed) * m)
