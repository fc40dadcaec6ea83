"""Parity with verl's policy losses and advantage estimators (optional dependency; skipped when absent).

verl's functions in `verl.trainer.ppo.core_algos` are called unchanged, with an `ActorConfig` carrying
the hyperparameters. verl's package import pulls in ray, tensordict, hydra-core, omegaconf, codetiming,
pylatexenc, peft, torchdata and orjson, but the numerics run on CPU torch. Values and gradients with respect
to the log-probabilities must agree within 1e-5 in float32.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rl_jax
import parity_helpers
from parity_helpers import TOL

torch = pytest.importorskip("torch", reason="verl parity needs torch (CPU is enough)")
try:
  from verl.trainer.ppo import core_algos
  from verl.workers.config import ActorConfig
  from verl.workers.config.actor import PolicyLossConfig
except Exception as exc:  # ImportError, or a missing transitive dependency of verl's package import
  pytest.skip(f"verl.trainer.ppo.core_algos cannot be imported on this machine ({type(exc).__name__}: {exc}); "
              "pip install verl (plus ray, tensordict, hydra-core, codetiming, orjson) to run it",
              allow_module_level=True)

B, T = 6, 9


def _inputs(seed, *, spread=0.3):
  rng = np.random.default_rng(seed)
  old = rng.uniform(-3.0, -0.05, (B, T)).astype(np.float32)
  logp = (old + rng.normal(0.0, spread, (B, T))).astype(np.float32)
  lengths = rng.integers(1, T + 1, B)
  lengths[0] = T
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  adv = rng.normal(0.0, 1.0, (B,)).astype(np.float32)
  return logp, old, mask, adv


def _config(**kw):
  loss_kw = {k: kw.pop(k) for k in list(kw) if k in ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio",
                                                      "ppo_kl_coef")}
  return ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1,
                     policy_loss=PolicyLossConfig(**loss_kw), **kw)


def _verl(mode, logp, old, mask, adv, *, agg="token-mean", **kw):
  lp = torch.tensor(logp, requires_grad=True)
  a = torch.tensor(adv)[:, None] * torch.tensor(mask)  # verl takes token-level advantages [B, T]
  fn = core_algos.get_policy_loss_fn(mode)
  loss, _ = fn(torch.tensor(old), lp, a, torch.tensor(mask), loss_agg_mode=agg, config=_config(**kw))
  loss.backward()
  return float(loss.detach()), lp.grad.numpy()


_ours, _check = parity_helpers.ours, parity_helpers.check


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_vanilla_dual_clip(agg, jit):
  logp, old, mask, adv = _inputs(1, spread=1.5)
  r = np.exp(logp - old)
  assert np.any((r > 3.0) & (adv[:, None] < 0) & (mask > 0))  # the dual clip binds somewhere
  peer = _verl("vanilla", logp, old, mask, adv, agg=agg, clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28,
               clip_ratio_c=3.0)
  _check(peer, _ours("ppo_dual_clip", logp, old, mask, adv, jit=jit, eps_low=0.2, eps_high=0.28, dual_clip_c=3.0,
                     agg=agg))


@pytest.mark.parametrize("jit", [False, True])
def test_gspo(jit):
  logp, old, mask, adv = _inputs(2, spread=0.05)
  peer = _verl("gspo", logp, old, mask, adv, agg="seq-mean-token-mean", clip_ratio_low=3e-3, clip_ratio_high=4e-3)
  _check(peer, _ours("gspo", logp, old, mask, adv, jit=jit, eps_low=3e-3, eps_high=4e-3))
  _check(peer, _ours("gspo_token", logp, old, mask, adv, jit=jit, eps_low=3e-3, eps_high=4e-3))


@pytest.mark.parametrize("jit", [False, True])
def test_sapo(jit):
  logp, old, mask, adv = _inputs(3)
  peer = _verl("sapo", logp, old, mask, adv, tau_pos=1.0, tau_neg=1.05)
  _check(peer, _ours("sapo", logp, old, mask, adv, jit=jit, tau_pos=1.0, tau_neg=1.05))


@pytest.mark.parametrize("jit", [False, True])
def test_cispo_relative_bounds(jit):
  logp, old, mask, adv = _inputs(4, spread=1.0)
  peer = _verl("cispo", logp, old, mask, adv, clip_ratio_low=10.0, clip_ratio_high=0.2)
  _check(peer, _ours("cispo", logp, old, mask, adv, jit=jit, eps_low=10.0, eps_high=0.2, cap_mode="relative"))


@pytest.mark.parametrize("jit", [False, True])
def test_geo_mean_is_gmpo(jit):
  logp, old, mask, adv = _inputs(5, spread=0.5)
  peer = _verl("geo_mean", logp, old, mask, adv, clip_ratio_low=0.4, clip_ratio_high=0.4)
  _check(peer, _ours("gmpo", logp, old, mask, adv, jit=jit, clip_c=0.4))


@pytest.mark.parametrize("jit", [False, True])
def test_clip_cov_deterministic_selection(jit):
  # verl draws the detached tokens with torch.randperm, rl_jax with a JAX key. With a ratio large enough
  # that every candidate is detached the selection is deterministic in both, so values must agree.
  logp, old, mask, adv = _inputs(6, spread=0.3)
  adv = adv * 4.0
  lb, ub = 0.5, 5.0
  kw = dict(clip_cov_ratio=0.5, clip_cov_lb=lb, clip_cov_ub=ub)
  peer = _verl("clip_cov", logp, old, mask, adv, clip_ratio_low=0.2, clip_ratio_high=0.2, **kw)
  ours = _ours("clip_cov", logp, old, mask, adv, jit=jit, rng=jax.random.PRNGKey(0), eps_low=0.2, eps_high=0.2, **kw)
  valid = mask > 0
  a = np.broadcast_to(adv[:, None], mask.shape)
  cov = (a - a[valid].mean()) * (logp - logp[valid].mean())
  assert 0 < np.sum(valid & (cov > lb) & (cov < ub)) <= int(0.5 * valid.sum())  # some, and all, are detached
  _check(peer, ours)


@pytest.mark.parametrize("jit", [False, True])
def test_kl_cov(jit):
  # verl's kl_cov_ratio is a direct fraction, matching rl_jax's kl_cov_frac; coefficient passed explicitly.
  logp, old, mask, adv = _inputs(7)
  peer = _verl("kl_cov", logp, old, mask, adv, kl_cov_ratio=0.1, ppo_kl_coef=0.1)
  _check(peer, _ours("kl_cov", logp, old, mask, adv, jit=jit, kl_cov_frac=0.1, kl_cov_coef=0.1))


# ---- advantage estimators ([P, G] rewards, verl's flat [B] layout with a group index) ----------------------------

P, G = 3, 4


def _adv_inputs(seed):
  rng = np.random.default_rng(seed)
  rewards = rng.integers(0, 3, (P, G)).astype(np.float32)
  rewards[0] = 1.0  # an all-equal group
  lengths = rng.integers(1, T + 1, (P, G))
  mask = (np.arange(T)[None, None, :] < lengths[..., None]).astype(np.float32)
  return rewards, mask


def _token_rewards(rewards, mask):
  last = mask.sum(-1).astype(int) - 1
  out = np.zeros(mask.shape, np.float32)
  for p in range(P):
    for g in range(G):
      out[p, g, last[p, g]] = rewards[p, g]
  return out.reshape(P * G, T)


def _index():
  return np.repeat(np.arange(P), G)


@pytest.mark.parametrize("jit", [False, True])
def test_grpo_and_rloo_advantages(jit):
  rewards, mask = _adv_inputs(8)
  m = mask.reshape(P * G, T)
  tr, tm = torch.tensor(_token_rewards(rewards, mask)), torch.tensor(m)
  for verl_name, ours_fn, kw in (("grpo", rl_jax.advantages.grpo, {}), ("rloo", rl_jax.advantages.rloo, {})):
    peer, _ = core_algos.get_adv_estimator_fn(verl_name)(token_level_rewards=tr, response_mask=tm, index=_index())
    fn = jax.jit(ours_fn) if jit else ours_fn
    ours = np.asarray(fn(jnp.asarray(rewards), **kw)).reshape(P * G)[:, None] * m
    np.testing.assert_allclose(ours, peer.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("jit", [False, True])
def test_reinforce_pp_advantages(jit):
  rewards, mask = _adv_inputs(9)
  m = mask.reshape(P * G, T)
  tr, tm = torch.tensor(_token_rewards(rewards, mask)), torch.tensor(m)
  cfg = core_algos.AlgoConfig(gamma=0.9)
  peer, _ = core_algos.get_adv_estimator_fn("reinforce_plus_plus")(token_level_rewards=tr, response_mask=tm,
                                                                    config=cfg)
  fn = jax.jit(rl_jax.advantages.reinforce_pp, static_argnames=("gamma", "norm")) if jit else \
      rl_jax.advantages.reinforce_pp
  ours = fn(jnp.asarray(rewards), jnp.asarray(mask), gamma=0.9, norm="verl")
  np.testing.assert_allclose(np.asarray(ours).reshape(P * G, T), peer.numpy(), rtol=TOL, atol=TOL)

  peer_b, _ = core_algos.get_adv_estimator_fn("reinforce_plus_plus_baseline")(token_level_rewards=tr,
                                                                               response_mask=tm, index=_index())
  fn_b = jax.jit(rl_jax.advantages.reinforce_pp_baseline, static_argnames=("norm",)) if jit else \
      rl_jax.advantages.reinforce_pp_baseline
  ours_b = fn_b(jnp.asarray(rewards), jnp.asarray(mask), norm="verl")
  np.testing.assert_allclose(np.asarray(ours_b).reshape(P * G, T), peer_b.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("estimator", ["k1", "low_var_kl"])
def test_reinforce_pp_with_kl_in_reward(estimator, jit):
  """β > 0 with verl's use_kl_in_reward: token_level_rewards = outcome on the last token − β·kl (as verl's
  apply_kl_penalty builds them), then verl's estimators; rl_jax gets the same per-token kl and β."""
  rewards, mask = _adv_inputs(13)
  rng = np.random.default_rng(14)
  old = rng.uniform(-3.0, -0.05, mask.shape).astype(np.float32)
  ref_lp = (old + rng.normal(0.0, 0.5, mask.shape)).astype(np.float32)
  m = mask.reshape(P * G, T)
  kld = core_algos.kl_penalty(torch.tensor(old.reshape(P * G, T)), torch.tensor(ref_lp.reshape(P * G, T)),
                              kl_penalty=estimator) * torch.tensor(m)
  beta = 0.2
  tr, tm = torch.tensor(_token_rewards(rewards, mask)) - beta * kld, torch.tensor(m)
  kl = kld.numpy().reshape(P, G, T)
  peer_b, _ = core_algos.get_adv_estimator_fn("reinforce_plus_plus_baseline")(token_level_rewards=tr,
                                                                               response_mask=tm, index=_index())
  fn_b = jax.jit(rl_jax.advantages.reinforce_pp_baseline, static_argnames=("norm",)) if jit else \
      rl_jax.advantages.reinforce_pp_baseline
  ours_b = fn_b(jnp.asarray(rewards), jnp.asarray(mask), kl=jnp.asarray(kl), beta=beta, norm="verl")
  np.testing.assert_allclose(np.asarray(ours_b).reshape(P * G, T), peer_b.numpy(), rtol=TOL, atol=TOL)
  peer, _ = core_algos.get_adv_estimator_fn("reinforce_plus_plus")(token_level_rewards=tr, response_mask=tm,
                                                                    config=core_algos.AlgoConfig(gamma=0.9))
  fn = jax.jit(rl_jax.advantages.reinforce_pp, static_argnames=("gamma", "norm")) if jit else \
      rl_jax.advantages.reinforce_pp
  ours = fn(jnp.asarray(rewards), jnp.asarray(mask), kl=jnp.asarray(kl), beta=beta, gamma=0.9, norm="verl")
  np.testing.assert_allclose(np.asarray(ours).reshape(P * G, T), peer.numpy(), rtol=TOL, atol=TOL)
  # OpenRLHF's form (outcome-only centring, KL tail per token) is a different estimator once β > 0
  other = rl_jax.advantages.reinforce_pp_baseline(jnp.asarray(rewards), jnp.asarray(mask), kl=jnp.asarray(kl),
                                                  beta=beta, norm="openrlhf_verl_whiten")
  assert np.abs(np.asarray(other).reshape(P * G, T) - peer_b.numpy()).max() > 1e-2


@pytest.mark.parametrize("jit", [False, True])
def test_gae(jit):
  rewards, mask = _adv_inputs(10)
  values = np.random.default_rng(11).normal(0.0, 1.0, mask.shape).astype(np.float32) * mask
  m = mask.reshape(P * G, T)
  peer_adv, peer_ret = core_algos.compute_gae_advantage_return(
      token_level_rewards=torch.tensor(_token_rewards(rewards, mask)), values=torch.tensor(values.reshape(P * G, T)),
      response_mask=torch.tensor(m), gamma=0.95, lam=0.9)
  fn = jax.jit(rl_jax.advantages.gae, static_argnames=("gamma", "lam")) if jit else rl_jax.advantages.gae
  adv, ret = fn(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=0.95, lam=0.9)
  np.testing.assert_allclose(np.asarray(adv).reshape(P * G, T), peer_adv.numpy() * m, rtol=TOL, atol=TOL)
  np.testing.assert_allclose(np.asarray(ret).reshape(P * G, T), peer_ret.numpy() * m, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("jit", [False, True])
def test_seq_mean_token_sum_norm_with_constant_scale(jit):
  # verl's "seq-mean-token-sum-norm" divides by the number of non-empty sequences and by loss_scale_factor
  # (the padded width of the micro-batch unless set). With a constant factor it equals rl_jax's (oat's) mode.
  logp, old, mask, adv = _inputs(12)
  l_const = 16
  peer = _verl("vanilla", logp, old, mask, adv, agg="seq-mean-token-sum-norm", clip_ratio=0.2,
               clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=1e9,
               global_batch_info={"loss_scale_factor": l_const})
  _check(peer, _ours("grpo", logp, old, mask, adv, jit=jit, beta=0.0, agg="seq-mean-token-sum-norm", max_len=l_const))
