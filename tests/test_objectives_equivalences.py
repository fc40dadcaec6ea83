"""Reductions between objectives (rlax-style equivalence tests), each with and without jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import objectives, registry
from objective_cases import as_f32, make_batch, method_kwargs

JIT = [False, True]
AGGS = list(objectives.AGG_MODES)


def value_and_grad(fn, logp, *args, jit, **kw):
  vg = jax.value_and_grad(lambda lp: fn(lp, *args, **kw)[0])
  return (jax.jit(vg) if jit else vg)(logp)


def assert_same(a, b, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=rtol, atol=atol)
  np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=rtol, atol=atol)


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("agg", AGGS)
def test_dapo_with_equal_bounds_is_grpo_without_kl(agg, jit):
  logp, old, ref, adv, mask, _ = make_batch(seed=10, spread=0.5)
  args = as_f32(old, adv, mask)
  eps = 0.23
  dapo = value_and_grad(objectives.dapo, jnp.asarray(logp, jnp.float32), *args, jit=jit, eps_low=eps, eps_high=eps,
                        agg=agg, max_len=11)
  grpo = value_and_grad(objectives.grpo, jnp.asarray(logp, jnp.float32), *args, jit=jit, eps_low=eps, eps_high=eps,
                        beta=0.0, agg=agg, max_len=11)
  assert_same(dapo, grpo)


@pytest.mark.parametrize("jit", JIT)
def test_gspo_is_grpo_when_every_sequence_has_one_token(jit):
  logp, old, ref, adv, mask, _ = make_batch(seed=11, t=1, lengths=(1, 1, 0, 1, 1, 1), spread=0.3)
  args = as_f32(old, adv, mask)
  eps = dict(eps_low=0.1, eps_high=0.15)
  gspo = value_and_grad(objectives.gspo, jnp.asarray(logp, jnp.float32), *args, jit=jit, **eps)
  grpo = value_and_grad(objectives.grpo, jnp.asarray(logp, jnp.float32), *args, jit=jit, beta=0.0, **eps)
  assert_same(gspo, grpo)
  gspo_tok = value_and_grad(objectives.gspo_token, jnp.asarray(logp, jnp.float32), *args, jit=jit, **eps)
  assert_same(gspo_tok, grpo)


@pytest.mark.parametrize("jit", JIT)
def test_gspo_token_equals_gspo_with_sequence_advantages(jit):
  logp, old, ref, adv, mask, _ = make_batch(seed=12, spread=0.02)
  args = as_f32(old, adv, mask)
  eps = dict(eps_low=0.01, eps_high=0.012)
  assert_same(value_and_grad(objectives.gspo_token, jnp.asarray(logp, jnp.float32), *args, jit=jit, **eps),
              value_and_grad(objectives.gspo, jnp.asarray(logp, jnp.float32), *args, jit=jit, **eps))


# Methods whose gradient at logp == old_logp must be the plain policy gradient −Â ∇logp
# (same aggregation), with the keywords that make that true.
ON_POLICY = {
    "grpo": {}, "ppo_dual_clip": {}, "dr_grpo": {}, "dapo": {}, "ngrpo": {}, "dcpo": {}, "minpro": {},
    "gspo": {}, "gspo_token": {}, "sapo": {}, "cispo": {}, "dhpo": {"mixing": "average"}, "sspo": {},
    "rank_grpo": {},
    "gmpo": {}, "hapo": {"adv_beta": 0.0}, "clip_cov": {"clip_cov_lb": 1e8}, "kl_cov": {"kl_cov_coef": 0.0},
    "tis": {}, "mis": {}, "topr": {}, "minirl": {},
    "opmd": {"tau": 0.0}, "llds": {}, "steer": {"w_min": 1.0, "w_max": 1.0},
}
AGG_OF = {"gmpo": "seq-mean-token-mean"}


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("name", sorted(ON_POLICY))
def test_on_policy_gradient_is_plain_policy_gradient(name, jit):
  logp, _, _, adv, mask, extras = make_batch(seed=13)
  kw = method_kwargs(name, extras)
  kw.update(ON_POLICY[name])
  kw["beta"] = 0.0
  if name in ("tis", "mis", "minirl"):
    kw["rollout_logp"] = logp  # no train/inference mismatch: weights are 1
  fn = objectives.get(name)
  lp, a, m = as_f32(logp, adv, mask)
  _, grad = value_and_grad(fn, lp, lp, a, m, jit=jit, **kw)
  defaults = registry.hyperparameters(fn)
  agg = AGG_OF.get(name, kw.get("agg", defaults.get("agg", "seq-mean-token-mean")))
  max_len = kw.get("max_len", defaults.get("max_len"))

  def plain(lp_):
    per_token = -a[:, None] * lp_
    return objectives.aggregate(per_token * m, m, agg, max_len=max_len)

  np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(plain)(lp)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("jit", JIT)
def test_sapo_gate_tends_to_a_hard_gate_as_temperature_grows(jit):
  """SAPO's gradient weight 4p(1−p)·r is 1 at r = 1 and vanishes off-policy as τ → ∞ (hard gate)."""
  ratio = jnp.array([[0.8, 0.95, 1.0, 1.05, 1.3]], jnp.float32)
  logp = jnp.log(ratio)
  old = jnp.zeros_like(logp)
  mask = jnp.ones_like(logp)
  adv = jnp.array([1.0], jnp.float32)
  weights = []
  for tau in (1.0, 10.0, 100.0, 1000.0):
    _, g = value_and_grad(objectives.sapo, logp, old, adv, mask, jit=jit, tau_pos=tau, tau_neg=tau,
                          agg="seq-mean-token-sum")
    weights.append(-np.asarray(g)[0])  # d loss / d logp = −w·Â with Â = 1, summed per token
  weights = np.array(weights)
  off = [0, 1, 3, 4]
  assert np.all(np.diff(weights[:, off], axis=0) <= 0), "off-policy weight must not grow with τ"
  assert np.all(weights[1, off] < weights[0, off])
  assert np.all(weights[-1, off] < 1e-6)
  np.testing.assert_allclose(weights[:, 2], 1.0, rtol=1e-6)


@pytest.mark.parametrize("jit", JIT)
def test_tis_with_no_mismatch_is_the_base_objective(jit):
  logp, old, ref, adv, mask, _ = make_batch(seed=14)
  lp, o, a, m, r = as_f32(logp, old, adv, mask, ref)
  base = value_and_grad(objectives.dapo, lp, o, a, m, jit=jit)
  for name in ("tis", "mis"):
    corrected = value_and_grad(objectives.get(name), lp, o, a, m, jit=jit, rollout_logp=o, base="dapo")
    assert_same(corrected, base)


@pytest.mark.parametrize("jit", JIT)
def test_minpro_with_a_flat_prefix_is_ppo_clip(jit):
  """When every token ratio is ≥ 1 on the prefix and cap_at_one is set, MinPRO's weights are 1."""
  logp, old, ref, adv, mask, _ = make_batch(seed=15)
  old = logp - np.abs(old - logp)  # r ≥ 1 everywhere
  lp, o, a, m = as_f32(logp, old, adv, mask)
  assert_same(value_and_grad(objectives.minpro, lp, o, a, m, jit=jit, cap_at_one=True),
              value_and_grad(objectives.grpo, lp, o, a, m, jit=jit, beta=0.0, agg="token-mean"))


@pytest.mark.parametrize("jit", JIT)
def test_microbatch_token_sums_combine_to_the_full_batch_loss(jit):
  """Token-mean over a batch == (Σ over micro-batches of loss·tokens) / total tokens."""
  logp, old, ref, adv, mask, _ = make_batch(seed=16)
  full = value_and_grad(objectives.dapo, *as_f32(logp, old, adv, mask), jit=jit)[0]
  parts = []
  for sl in (slice(0, 3), slice(3, 6)):
    loss = value_and_grad(objectives.dapo, *as_f32(logp[sl], old[sl], adv[sl], mask[sl]), jit=jit)[0]
    parts.append(float(loss) * mask[sl].sum())
  np.testing.assert_allclose(sum(parts) / mask.sum(), float(full), rtol=1e-5)


def test_permuting_the_batch_leaves_the_loss_unchanged():
  logp, old, ref, adv, mask, extras = make_batch(seed=17)
  perm = np.array([3, 0, 5, 1, 4, 2])
  for name in ("grpo", "dapo", "gspo", "sapo", "dr_grpo", "cispo"):
    a, _ = objectives.get(name)(*as_f32(logp, old, adv, mask), ref_logp=jnp.asarray(ref, jnp.float32))
    b, _ = objectives.get(name)(*as_f32(logp[perm], old[perm], adv[perm], mask[perm]),
                                ref_logp=jnp.asarray(ref[perm], jnp.float32))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5, atol=1e-7)
