"""Supervised fine-tuning losses over the full next-token distribution (the SFT step has every logit; the RL
objectives see only the taken tokens' log-probs).

`otr_loss` is One-Token Rollout: each position of the supervised data is a one-step RL problem whose
candidate actions are sampled from the current policy and rewarded by agreement with the data's token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.checks import check_hparam

Array = jax.Array
sg = jax.lax.stop_gradient


def otr_candidates(rng: Array, logits: Array, *, num_samples: int, temperature: float = 1.0) -> Array:
  """K candidate tokens [B, T, K] per position, drawn i.i.d. from softmax(logits / temperature) (no gradient)."""
  check_hparam("num_samples", num_samples, low=1, integer=True, method="otr")
  check_hparam("temperature", temperature, low=0.0, strict=True, method="otr")
  z = sg(logits.astype(jnp.float32)) / temperature
  draws = jax.random.categorical(rng, z[..., None, :], axis=-1, shape=z.shape[:-1] + (num_samples,))
  return draws.astype(jnp.int32)


def otr_surrogate(logits: Array, candidates: Array, targets: Array, mask: Array, *, neg_reward: float = 0.0,
                  baseline: bool = True) -> tuple[Array, dict]:
  """OTR's policy-gradient surrogate for given candidates [B, T, K]:

    r_k = 1 if a_k = y_t else neg_reward,  b_t = mean_k r_k (baseline=True) or 0,
    ℓ_t = −(1/K) Σ_k (r_k − b_t) log π(a_k | s_t),   loss = token mean of ℓ over `mask`.

  With baseline=False and neg_reward = 0, E[∇ℓ_t] = −∇π(y_t | s_t): the data token's probability rises
  (not its log-probability, as in cross-entropy); the baseline keeps the expectation and lowers the variance."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, candidates, axis=-1)                                    # [B, T, K]
  hit = candidates == targets[..., None]
  reward = jnp.where(hit, 1.0, neg_reward)
  adv = reward - (reward.mean(axis=-1, keepdims=True) if baseline else 0.0)
  per_token = -jnp.mean(sg(adv) * picked, axis=-1)
  m = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  return jnp.sum(per_token * m) / n, {"otr_hit_rate": jnp.sum(hit.mean(axis=-1) * m) / n}


def otr_loss(logits: Array, targets: Array, mask: Array, rng: Array, *, num_samples: int = 8,
             temperature: float = 1.0, neg_reward: float = 0.0, baseline: bool = True) -> tuple[Array, dict]:
  """One-Token Rollout loss: `otr_candidates` then `otr_surrogate`. logits [B, T, V] predict targets [B, T].

  "One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient", arXiv 2509.26313.
  [reconstruction] from the abstract (no code reachable): K candidates sampled from the current policy per
  position, reward 1 for the ground-truth token; the non-match reward, the group-mean baseline, K = 8, the
  sampling temperature and the plain REINFORCE form (no ratio or clipping: the candidates are on-policy) are
  assumptions, each a keyword.
  """
  check_hparam("neg_reward", neg_reward, high=1.0, method="otr")
  cands = otr_candidates(rng, logits, num_samples=num_samples, temperature=temperature)
  return otr_surrogate(logits, cands, targets, mask, neg_reward=neg_reward, baseline=baseline)


def make_otr_sft_step(cfg, optimizer, **otr_kw):
  """Jitted (state, SFTBatch) -> (state, metrics) training on `otr_loss` instead of cross-entropy: the logits at
  the answer positions (position j predicts token j + 1), candidates drawn with fold_in(state.rng, state.step)."""
  import optax
  from rl_jax.models import forward
  from rl_jax.train import _apply

  def loss_fn(params, batch, key):
    tokens = jnp.concatenate([batch.prompts, batch.answers], axis=1)
    attn = jnp.concatenate([batch.prompt_mask, batch.answer_mask], axis=1)
    logits = forward(params, tokens, cfg, attn_mask=attn)[:, batch.prompts.shape[1] - 1:-1]
    return otr_loss(logits, batch.answers, batch.answer_mask, key, **otr_kw)

  @jax.jit
  def step(state, batch):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    return _apply(optimizer, state, grads), dict(metrics, sft_loss=loss, grad_norm=optax.global_norm(grads))

  return step
