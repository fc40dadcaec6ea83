"""Estimators that carry state across training steps (state in, state out): DCPO's smooth advantage
standardisation and single-stream SPO's per-prompt value tracker."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl_jax.advantages.core import check_rewards, register

Array = jax.Array


class RewardStats(NamedTuple):
  """Per-prompt cumulative reward statistics (index = prompt id)."""
  count: Array   # [N] int32 number of earlier steps in which the prompt was sampled
  mean: Array    # [N] cumulative mean
  std: Array     # [N] cumulative (unbiased-combined) std


def init_reward_stats(num_prompts: int) -> RewardStats:
  return RewardStats(jnp.zeros((num_prompts,), jnp.int32), jnp.zeros((num_prompts,)), jnp.zeros((num_prompts,)))


def _safe_div(x, d):
  return jnp.where(d > 0, x / jnp.where(d > 0, d, 1.0), 0.0)


@register
def dcpo(rewards, prompt_ids, state: RewardStats, *, old_mean_ratio: float = 1.0) -> tuple[Array, RewardStats]:
  """DCPO smooth advantage standardisation (SAS) across the steps in which a prompt was sampled.

  At the prompt's n-th appearance, with the current group's (μ_new, σ_new) (unbiased) and the cumulative
  (μ_old, σ_old) of the n − 1 earlier ones:
    μ_tot = ((n−1)μ_old + μ_new)/n,  σ²_tot = [(n−1)σ²_old + σ²_new + ((n−1)/n)(μ_new − μ_old)²]/n;
    A_new = (R − μ_new)/σ_new (0 if σ_new = 0),  A_tot = (R − μ_tot)/σ_tot (0 if σ_tot = 0), no eps;
    SA_new = A_tot/n + (1 − 1/n) A_new,  SA_tot = A_new/n + (1 − 1/n) A_tot;  Â = the one of smaller |·|.
  First appearance: Â = A_new. A group whose rewards all agree still learns from its history (n ≥ 2).
  "DCPO: Dynamic Clipping Policy Optimization", arXiv 2509.02333 (official code `compute_dcpo_outcome_advantage`;
  `old_mean_ratio` is its user_old_mean_ratio, scaling μ_old and σ_old). `prompt_ids` [P] index `state`.
  Returns (advantages [P, G], new state).
  """
  r = check_rewards(rewards, min_group=2, method="dcpo")
  ids = jnp.asarray(prompt_ids, jnp.int32)
  if ids.shape != r.shape[:1]:
    raise ValueError(f"dcpo: prompt_ids must be [P] = {r.shape[:1]}, got {ids.shape}.")
  n_prev = state.count[ids].astype(jnp.float32)
  n = n_prev + 1.0
  mu_old, sd_old = state.mean[ids] * old_mean_ratio, state.std[ids] * old_mean_ratio
  mu_new, sd_new = r.mean(1), jnp.std(r, axis=1, ddof=1)
  first = n_prev == 0
  mu_tot = jnp.where(first, mu_new, (n_prev * mu_old + mu_new) / n)
  var_tot = (n_prev * sd_old ** 2 + sd_new ** 2 + (n_prev / n) * (mu_new - mu_old) ** 2) / n
  sd_tot = jnp.where(first, sd_new, jnp.sqrt(var_tot))
  a_new = _safe_div(r - mu_new[:, None], sd_new[:, None])
  a_tot = _safe_div(r - mu_tot[:, None], sd_tot[:, None])
  w = (1.0 / n)[:, None]
  sa_new = w * a_tot + (1 - w) * a_new
  sa_tot = w * a_new + (1 - w) * a_tot
  adv = jnp.where(jnp.abs(sa_new) < jnp.abs(sa_tot), sa_new, sa_tot)
  new_state = RewardStats(state.count.at[ids].add(1), state.mean.at[ids].set(mu_tot), state.std.at[ids].set(sd_tot))
  return jax.lax.stop_gradient(adv), new_state


class ValueTracker(NamedTuple):
  """Single-stream SPO's per-prompt Beta tracker (α, β) and the last logged response's log-probs."""
  alpha: Array   # [N]
  beta: Array    # [N]


def init_value_tracker(offline_successes, offline_trials, *, rho_min: float = 0.875) -> ValueTracker:
  """α0 = N_init (k + 0.5)/(N_eff + 1), β0 = N_init (N_eff − k + 0.5)/(N_eff + 1), N_init = 1/(1 − ρ_min);
  a prompt with no offline samples (N_eff = 0) starts at α0 = β0 = 0.5, as in the official recipe."""
  k = jnp.asarray(offline_successes, jnp.float32)
  n = jnp.asarray(offline_trials, jnp.float32)
  n_init = 1.0 / (1.0 - rho_min)
  alpha = jnp.where(n > 0, n_init * (k + 0.5) / (n + 1.0), 0.5)
  beta = jnp.where(n > 0, n_init * (n - k + 0.5) / (n + 1.0), 0.5)
  return ValueTracker(alpha, beta)


def tracker_rho(kl_distance, *, d_half: float = 0.06, rho_min: float = 0.875, rho_max: float = 0.96) -> Array:
  """KL-adaptive forgetting factor ρ = clip(2^(−D/D_half), ρ_min, ρ_max)."""
  return jnp.clip(jnp.power(2.0, -jnp.asarray(kl_distance) / d_half), rho_min, rho_max)


@register
def single_stream(rewards, prompt_ids, tracker: ValueTracker, *, kl_distance=None, d_half: float = 0.06,
                  rho_min: float = 0.875, rho_max: float = 0.96, eps: float = 1e-8,
                  sampling_floor: float = 0.05) -> tuple[Array, ValueTracker, Array]:
  """Single-stream policy optimisation: one response per prompt, a persistent per-prompt baseline.

    p̂ = α/(α + β) (tracker BEFORE this step),  a_i = r_i − p̂(x_i),  A = (a − mean_B a)/(std_B a + eps),
    update α ← ρα + r, β ← ρβ + (1 − r) with ρ = clip(2^(−D/D_half), ρ_min, ρ_max),
    sampling weights w_x = sqrt(p̂(1 − p̂)) + 0.05 (normalise to sample the next batch).

  "Single-stream Policy Optimization", arXiv 2509.13232; defaults from the official recipe. `rewards`
  [B, 1] binary, `prompt_ids` [B], `kl_distance` [B] the mean |Δ log π| on the prompt's last response
  (0 on a first visit, i.e. ρ = ρ_max). Returns (advantages [B, 1], new tracker, weights [N] over prompts).
  Duplicated prompts in a batch: the later write wins, as in the official code.
  """
  r = check_rewards(rewards, method="single_stream")
  if r.shape[1] != 1:
    raise ValueError(f"single_stream takes one response per prompt (rewards [B, 1]), got {r.shape}.")
  r = r[:, 0]
  ids = jnp.asarray(prompt_ids, jnp.int32)
  p_hat = tracker.alpha[ids] / (tracker.alpha[ids] + tracker.beta[ids])
  a = r - p_hat
  sd = jnp.std(a, ddof=1) if a.shape[0] > 1 else jnp.asarray(1.0)
  adv = (a - a.mean()) / (sd + eps)
  d = jnp.zeros_like(r) if kl_distance is None else jnp.asarray(kl_distance, jnp.float32)
  rho = tracker_rho(d, d_half=d_half, rho_min=rho_min, rho_max=rho_max)
  new = ValueTracker(tracker.alpha.at[ids].set(rho * tracker.alpha[ids] + r),
                     tracker.beta.at[ids].set(rho * tracker.beta[ids] + (1.0 - r)))
  p_all = new.alpha / (new.alpha + new.beta)
  weights = jnp.sqrt(p_all * (1.0 - p_all)) + sampling_floor
  return jax.lax.stop_gradient(adv[:, None]), new, weights / jnp.sum(weights)
