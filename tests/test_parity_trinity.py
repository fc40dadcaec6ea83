"""Parity with Trinity-RFT, the official code of OPMD and AsymRE (optional dependency; skipped when absent).

"Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm" (arXiv 2509.24203) ships its OPMD and AsymRE
in Trinity-RFT: the policy loss `trinity.algorithm.policy_loss_fn.opmd_policy_loss.OPMDPolicyLossFn` and the
group advantages `OPMDGroupAdvantage` / `ASYMREGroupAdvantage`. They are called unchanged: the loss on a leaf
tensor of log-probabilities (value and gradient are Trinity's), the advantages through `process` on Trinity's
own `Experience` objects grouped by task id. Trinity's package import needs ray and omegaconf besides torch
(`pip install --no-deps trinity-rft==0.6.0 ray omegaconf` is enough for these modules); the numerics run on
CPU torch. Losses and gradients agree within 1e-5 in float32, advantages within 1e-6.
"""
import numpy as np
import pytest

import rl_jax
import parity_helpers

torch = pytest.importorskip("torch", reason="Trinity-RFT parity needs torch (CPU is enough)")
try:
  from trinity.algorithm.advantage_fn.asymre_advantage import ASYMREGroupAdvantage
  from trinity.algorithm.advantage_fn.opmd_advantage import OPMDGroupAdvantage
  from trinity.algorithm.policy_loss_fn.opmd_policy_loss import OPMDPolicyLossFn
  from trinity.common.experience import EID, Experience
except Exception as exc:  # ImportError, or a missing transitive dependency of Trinity's package import
  pytest.skip(f"Trinity-RFT cannot be imported on this machine ({type(exc).__name__}: {exc}); "
              "pip install --no-deps trinity-rft==0.6.0 ray omegaconf to run it", allow_module_level=True)

B, T = 6, 9


def _inputs(seed):
  rng = np.random.default_rng(seed)
  old = rng.uniform(-3.0, -0.05, (B, T)).astype(np.float32)
  logp = (old + rng.normal(0.0, 0.3, (B, T))).astype(np.float32)
  lengths = rng.integers(1, T + 1, B)
  lengths[0] = T
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  adv = rng.normal(0.0, 1.0, (B,)).astype(np.float32)
  return logp, old, mask, adv


def _trinity_loss(logp, mask, adv, *, tau, agg):
  lp = torch.tensor(logp, requires_grad=True)
  fn = OPMDPolicyLossFn(tau=tau, loss_agg_mode=agg)
  token_adv = torch.tensor(adv)[:, None] * torch.tensor(mask)   # Trinity's advantages are token-level [B, T]
  loss, _ = fn(logprob=lp, action_mask=torch.tensor(mask), advantages=token_adv)
  loss.backward()
  return float(loss.detach()), lp.grad.numpy()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("tau,agg", [(1.0, "token-mean"), (3.0, "token-mean"), (0.0, "token-mean"),
                                     (1.0, "seq-mean-token-mean"), (0.5, "seq-mean-token-sum")])
def test_opmd_policy_loss(tau, agg, jit):
  logp, old, mask, adv = _inputs(int(10 * tau) + len(agg))
  peer = _trinity_loss(logp, mask, adv, tau=tau, agg=agg)
  parity_helpers.check(peer, parity_helpers.ours("opmd", logp, old, mask, adv, jit=jit, tau=tau, agg=agg))


def _trinity_advantages(fn, rewards):
  """Trinity's group advantages for rewards [P, G]: one Experience per sample, grouped by task id p."""
  exps = [Experience(eid=EID(task=p, run=g), tokens=torch.tensor([1, 2, 3]), prompt_length=1, reward=float(r))
          for p, row in enumerate(rewards) for g, r in enumerate(row)]
  out, _ = fn.process(exps)
  adv = np.zeros(np.shape(rewards))
  for e in out:
    a = e.advantages.numpy()
    assert np.all(a == a[0])                                    # one sequence-level value on every action token
    adv[e.eid.task, e.eid.run] = a[0]
  return adv


def _rewards(seed, p, g):
  rng = np.random.default_rng(seed)
  r = rng.integers(0, 2, (p, g)).astype(np.float32)
  r[-1] = rng.normal(0.0, 1.0, g)                               # one group of real-valued rewards
  if p > 2:
    r[0] = 1.0                                                  # a flat group
  return r


@pytest.mark.parametrize("g", [1, 2, 5])
@pytest.mark.parametrize("baseline,tau", [("mean", 1.0), ("logavgexp", 1.0), ("logavgexp", 0.3)])
def test_opmd_advantages(g, baseline, tau):
  rewards = _rewards(g, 4, g)
  peer = _trinity_advantages(OPMDGroupAdvantage(opmd_baseline=baseline, tau=tau), rewards)
  mine = rl_jax.advantages.get("opmd")(rewards, baseline=baseline, tau=tau)
  np.testing.assert_allclose(np.asarray(mine), peer, rtol=1e-6, atol=1e-6)
  assert g == 1 or np.abs(peer).max() > 0


@pytest.mark.parametrize("g", [1, 4])
@pytest.mark.parametrize("shift", [-0.1, -0.3, 0.2])
def test_asymre_advantages(g, shift):
  rewards = _rewards(7 + g, 4, g)
  peer = _trinity_advantages(ASYMREGroupAdvantage(baseline_shift=shift), rewards)
  mine = rl_jax.advantages.get("asymre")(rewards, baseline_shift=shift)
  np.testing.assert_allclose(np.asarray(mine), peer, rtol=1e-6, atol=1e-6)
  assert np.abs(peer).max() > 0
