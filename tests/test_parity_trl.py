"""Parity with TRL's GRPO loss (optional dependency: `pip install trl`; skipped when absent).

TRL computes its loss inside `GRPOTrainer._compute_loss(model, inputs)`. We call that method unchanged
on a minimal stand-in object holding only the attributes it reads; its one model call
(`_get_per_token_logps_and_entropies`) returns a leaf tensor of log-probabilities, so the value and the
gradient with respect to the log-probabilities are TRL's own. The stand-in runs in eval mode with one
process, so no gradient-accumulation rescaling is applied (TRL divides the train-mode loss by the
number of accumulation steps, a pure LR rescaling). Every row has at least one valid token, so TRL's
batch size B and rl_jax's count of non-empty sequences agree (see PEERS.md for the empty-row difference).
"""
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest

import parity_helpers

torch = pytest.importorskip("torch", reason="TRL parity needs torch (CPU is enough)")
grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer", reason="TRL is not installed (pip install trl)")

B, T, MAX_COMPLETION = 6, 9, 12


def _inputs(seed, *, token_adv=False, spread=0.3):
  rng = np.random.default_rng(seed)
  old = rng.uniform(-3.0, -0.05, (B, T)).astype(np.float32)
  logp = (old + rng.normal(0.0, spread, (B, T))).astype(np.float32)
  ref = (old + rng.normal(0.0, 0.1, (B, T))).astype(np.float32)
  lengths = rng.integers(1, T + 1, B)
  lengths[0] = T
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  adv = rng.normal(0.0, 1.0, (B, T) if token_adv else (B,)).astype(np.float32)
  return logp, old, ref, mask, adv


class _Accelerator:
  num_processes = 1

  def gather(self, x):
    return x

  gather_for_metrics = gather

  def reduce(self, x, reduction="sum"):
    return x


def _trl_loss(logp, old, ref, mask, adv, *, loss_type, level="token", eps_low=0.2, eps_high=None, beta=0.0,
              sapo_pos=1.0, sapo_neg=1.05):
  """TRL's loss and d(loss)/d(logp) from GRPOTrainer._compute_loss on a stand-in trainer."""
  lp = torch.tensor(logp, requires_grad=True)
  args = SimpleNamespace(delta=None, use_bias_correction_kl=False, sapo_temperature_pos=sapo_pos,
                         sapo_temperature_neg=sapo_neg)
  stub = SimpleNamespace(
      loss_type=loss_type, importance_sampling_level=level, epsilon_low=eps_low,
      epsilon_high=eps_low if eps_high is None else eps_high, beta=beta, args=args, top_entropy_quantile=1.0,
      off_policy_mask_threshold=None, use_vllm=False, vllm_importance_sampling_correction=False,
      model=SimpleNamespace(training=False), current_gradient_accumulation_steps=1,
      max_completion_length=MAX_COMPLETION, accelerator=_Accelerator(), _entropy_bonus_enabled=False,
      aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
      _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None))
  m = torch.tensor(mask)
  inputs = {
      "prompt_ids": torch.zeros((B, 1), dtype=torch.long), "prompt_mask": torch.ones((B, 1), dtype=torch.long),
      "completion_ids": torch.zeros((B, T), dtype=torch.long), "completion_mask": m,
      "advantages": torch.tensor(adv), "old_per_token_logps": torch.tensor(old),
      "ref_per_token_logps": torch.tensor(ref), "num_items_in_batch": m.sum(),
  }
  loss = grpo_trainer.GRPOTrainer._compute_loss(stub, None, inputs)
  loss.backward()
  return float(loss.detach()), lp.grad.numpy()


def _ours(name, logp, old, ref, mask, adv, **kw):
  return parity_helpers.ours(name, logp, old, mask, adv, ref=ref, **kw)


_check = parity_helpers.check


# (TRL loss_type, rl_jax objective, rl_jax keywords that select TRL's convention)
TOKEN_CASES = [
    ("grpo", "grpo", dict(agg="seq-mean-token-mean")),
    ("bnpo", "grpo", dict(agg="token-mean")),
    ("dr_grpo", "dr_grpo", dict(agg="seq-mean-token-sum-norm", max_len=MAX_COMPLETION)),
    # TRL's "dapo" has no dual clip (verl's DAPO recipe uses c = 10, rl_jax's default): dual_clip_c=None.
    ("dapo", "dapo", dict(agg="token-mean", dual_clip_c=None)),
]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type,name,kw", TOKEN_CASES, ids=[c[0] for c in TOKEN_CASES])
def test_token_level_clip_losses(loss_type, name, kw, beta, jit):
  logp, old, ref, mask, adv = _inputs(1)
  eps_low, eps_high = 0.2, 0.28
  trl_out = _trl_loss(logp, old, ref, mask, adv, loss_type=loss_type, eps_low=eps_low, eps_high=eps_high, beta=beta)
  ours = _ours(name, logp, old, ref, mask, adv, jit=jit, eps_low=eps_low, eps_high=eps_high, beta=beta,
               kl_estimator="k3", **kw)
  _check(trl_out, ours)


@pytest.mark.parametrize("jit", [False, True])
def test_token_level_per_token_advantages(jit):
  logp, old, ref, mask, adv = _inputs(2, token_adv=True)
  trl_out = _trl_loss(logp, old, ref, mask, adv, loss_type="grpo", eps_low=0.2, eps_high=0.2, beta=0.04)
  _check(trl_out, _ours("grpo", logp, old, ref, mask, adv, jit=jit, beta=0.04, agg="seq-mean-token-mean"))


@pytest.mark.parametrize("jit", [False, True])
def test_cispo_absolute_cap(jit):
  # TRL reads epsilon_high as an absolute cap on r (min(r, ε_high), no lower bound): cap_mode="absolute".
  logp, old, ref, mask, adv = _inputs(3, spread=1.0)
  cap = 1.5
  trl_out = _trl_loss(logp, old, ref, mask, adv, loss_type="cispo", eps_high=cap)
  ours = _ours("cispo", logp, old, ref, mask, adv, jit=jit, cap_mode="absolute", eps_high=cap, agg="token-mean")
  assert np.any(np.exp(logp - old)[mask > 0] > cap)  # the cap binds somewhere
  _check(trl_out, ours)


@pytest.mark.parametrize("jit", [False, True])
def test_sapo(jit):
  logp, old, ref, mask, adv = _inputs(4)
  trl_out = _trl_loss(logp, old, ref, mask, adv, loss_type="sapo", sapo_pos=1.0, sapo_neg=1.05)
  _check(trl_out, _ours("sapo", logp, old, ref, mask, adv, jit=jit, tau_pos=1.0, tau_neg=1.05))


SEQ_CASES = [
    ("grpo", dict(agg="seq-mean-token-mean")),
    ("bnpo", dict(agg="token-mean")),
    ("dr_grpo", dict(agg="seq-mean-token-sum-norm", max_len=MAX_COMPLETION)),
]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("loss_type,kw", SEQ_CASES, ids=[c[0] for c in SEQ_CASES])
def test_sequence_level_is_gspo(loss_type, kw, jit):
  # importance_sampling_level="sequence" is GSPO: s_i = exp(mean_t Δ), clipped per sequence.
  logp, old, ref, mask, adv = _inputs(5, spread=0.05)
  eps_low, eps_high = 3e-3, 4e-3
  trl_out = _trl_loss(logp, old, ref, mask, adv, loss_type=loss_type, level="sequence", eps_low=eps_low,
                      eps_high=eps_high)
  ours = _ours("gspo", logp, old, ref, mask, adv, jit=jit, eps_low=eps_low, eps_high=eps_high, **kw)
  s = np.exp(((logp - old) * mask).sum(-1) / mask.sum(-1))
  assert np.any((s > 1 + eps_high) | (s < 1 - eps_low)) and np.any(np.abs(s - 1) < 3e-3)  # both branches used
  _check(trl_out, ours)
