"""Parity with tunix's GRPO policy loss and advantage estimators (optional dependency; skipped when absent).

tunix's `grpo_loss_fn` (`tunix.rl.algo_core`) computes the policy's log-probabilities from its model; here
its `compute_per_token_logps` is replaced by one that returns log-probabilities held by a one-parameter
module, so the loss and its gradient are taken with respect to the log-probabilities themselves, as in
the TRL and verl parity tests. Everything after that line is tunix's code, unchanged. Values and gradients
must agree within 1e-5 in float32.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rl_jax
import parity_helpers
from parity_helpers import TOL

try:
  from flax import nnx
  from tunix.rl import algo_core
except Exception as exc:  # ImportError, or a missing transitive dependency of tunix's package import
  pytest.skip(f"tunix.rl.algo_core cannot be imported on this machine ({type(exc).__name__}: {exc}); "
              "pip install google-tunix to run it", allow_module_level=True)

B, T, G = 6, 9, 3


@pytest.fixture(autouse=True)
def _tunix_conventions(monkeypatch):
  """tunix broadcasts ranks implicitly; and its loss reads the log-probs our stand-in model holds."""
  before = jax.config.jax_numpy_rank_promotion
  jax.config.update("jax_numpy_rank_promotion", "allow")

  def held_logps(graphdef, state, **kw):
    logp = nnx.merge(graphdef, state).logp[...]
    return logp, jnp.zeros(logp.shape + (4,), logp.dtype)  # logits only feed tunix's entropy diagnostic

  monkeypatch.setattr(algo_core.common, "compute_per_token_logps", held_logps)
  yield
  jax.config.update("jax_numpy_rank_promotion", before)


class Holder(nnx.Module):
  def __init__(self, logp):
    self.logp = nnx.Param(logp)


def _inputs(seed, *, spread=0.3):
  rng = np.random.default_rng(seed)
  old = rng.uniform(-3.0, -0.05, (B, T)).astype(np.float32)
  logp = (old + rng.normal(0.0, spread, (B, T))).astype(np.float32)
  ref = (old + rng.normal(0.0, 0.2, (B, T))).astype(np.float32)
  lengths = rng.integers(1, T + 1, B)
  lengths[0] = T
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  adv = rng.normal(0.0, 1.0, (B,)).astype(np.float32)
  return logp, old, ref, mask, adv


def _config(**kw):
  base = dict(beta=0.0, epsilon=0.2, epsilon_high=0.2, epsilon_c=None, loss_algo="grpo",
              loss_agg_mode="sequence-mean-token-mean", kl_loss_mode="kl", kl_clamp_value=None, temperature=1.0)
  return types.SimpleNamespace(**{**base, **kw})


def _tunix(logp, old, ref, mask, adv, *, jit, **kw):
  cfg = _config(**kw)

  def loss(lp):
    example = types.SimpleNamespace(
        prompt_ids=jnp.zeros((B, 1), jnp.int32), prompt_mask=jnp.ones((B, 1), bool),
        completion_ids=jnp.zeros((B, T), jnp.int32), completion_mask=jnp.asarray(mask),
        advantages=jnp.asarray(adv), old_per_token_logps=jnp.asarray(old),
        ref_per_token_logps=jnp.asarray(ref) if cfg.beta else None)
    return algo_core.grpo_loss_fn(Holder(lp), example, cfg, pad_id=0, eos_id=1)[0]

  vg = jax.jit(jax.value_and_grad(loss)) if jit else jax.value_and_grad(loss)
  value, grad = vg(jnp.asarray(logp))
  return float(value), np.asarray(grad)


def _ours(name, logp, old, ref, mask, adv, **kw):
  return parity_helpers.ours(name, logp, old, mask, adv, ref=ref, **kw)


_check = parity_helpers.check


AGG = {"sequence-mean-token-mean": "seq-mean-token-mean", "token-mean": "token-mean"}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("tunix_agg", sorted(AGG))
def test_grpo_clip(tunix_agg, jit):
  x = _inputs(0, spread=0.5)
  assert np.any(np.abs(np.exp(x[0] - x[1]) - 1) > 0.2)   # the clip binds somewhere
  _check(_tunix(*x, jit=jit, loss_agg_mode=tunix_agg),
         _ours("grpo", *x, jit=jit, beta=0.0, agg=AGG[tunix_agg]))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("mode,estimator", [("kl", "k1"), ("mse_kl", "k2"), ("low_var_kl", "k3")])
def test_grpo_with_kl_to_the_reference(mode, estimator, jit):
  """tunix's GRPOConfig defaults to kl_loss_mode="kl" (k1); the GRPO paper and rl_jax's grpo use k3."""
  x = _inputs(1)
  _check(_tunix(*x, jit=jit, beta=0.04, kl_loss_mode=mode),
         _ours("grpo", *x, jit=jit, beta=0.04, kl_estimator=estimator))


@pytest.mark.parametrize("jit", [False, True])
def test_clip_higher_as_in_tunix_dapo(jit):
  """tunix's DAPOConfig: eps 0.2 / 0.28, token-mean, no KL, no dual clip."""
  x = _inputs(2, spread=0.5)
  _check(_tunix(*x, jit=jit, epsilon_high=0.28, loss_agg_mode="token-mean"),
         _ours("dapo", *x, jit=jit, dual_clip_c=None))


@pytest.mark.parametrize("jit", [False, True])
def test_dual_clip(jit):
  x = _inputs(3, spread=1.5)
  r = np.exp(x[0] - x[1])
  assert np.any((r > 3.0) & (x[4][:, None] < 0) & (x[3] > 0))  # the dual clip binds somewhere
  _check(_tunix(*x, jit=jit, epsilon_c=3.0, loss_agg_mode="token-mean"),
         _ours("ppo_dual_clip", *x, jit=jit, dual_clip_c=3.0))


@pytest.mark.parametrize("jit", [False, True])
def test_gspo_token(jit):
  x = _inputs(4, spread=0.01)
  _check(_tunix(*x, jit=jit, loss_algo="gspo-token", epsilon=3e-4, epsilon_high=4e-4),
         _ours("gspo_token", *x, jit=jit))


@pytest.mark.parametrize("jit", [False, True])
def test_both_clamp_log_ratios_at_20(jit):
  """tunix and rl_jax (as verl) clip log(π/π_old) to [-20, 20] before the exponential, so a ratio past e^20
  (possible with a negative advantage, where the PPO clip does not cap it) saturates alike, gradient 0."""
  logp, old, ref, mask, adv = _inputs(5)
  logp[0, 0], adv[0] = old[0, 0] + 25.0, -1.0
  peer = _tunix(logp, old, ref, mask, adv, jit=jit)
  _check(peer, _ours("grpo", logp, old, ref, mask, adv, jit=jit, beta=0.0))
  assert peer[0] > 1e6 and peer[1][0, 0] == 0.0


def _rewards(seed):
  rng = np.random.default_rng(seed)
  r = rng.integers(0, 3, (4, G)).astype(np.float32)
  r[1] = 1.0  # a group with equal rewards
  return r


@pytest.mark.parametrize("name,ours", [("grpo", lambda r: rl_jax.advantages.get("grpo")(r)),
                                       ("rloo", lambda r: rl_jax.advantages.get("rloo")(r)),
                                       ("drgrpo", lambda r: rl_jax.advantages.get("dr_grpo")(r))])
def test_advantages(name, ours):
  r = _rewards(6)
  fn = {"grpo": algo_core.compute_advantages, "rloo": algo_core.compute_rloo_advantages,
        "drgrpo": algo_core.compute_drgrpo_advantages}[name]  # registered in tunix under these names
  peer = np.asarray(fn(jnp.asarray(r.reshape(-1)), G)).reshape(r.shape)
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(r))), peer, rtol=TOL, atol=TOL)
  assert np.abs(peer).max() > 0
