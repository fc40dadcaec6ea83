"""The spec's worked examples, computed by the JAX pieces and objectives (hand-derived values)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import objectives

JIT = [False, True]


def maybe_jit(fn, jit):
  return jax.jit(fn) if jit else fn


def one_token(ratio, adv):
  """logp/old_logp/adv/mask for a batch of single-token sequences with the given ratios."""
  r = jnp.asarray(ratio, jnp.float32)[:, None]
  return jnp.log(r), jnp.zeros_like(r), jnp.asarray(adv, jnp.float32), jnp.ones_like(r)


@pytest.mark.parametrize("jit", JIT)
def test_ppo_dual_clip_per_token_values(jit):
  # ε = 0.2, c = 3: (r, Â) → ℓ
  cases = [(1.5, 1.0, -1.2), (1.5, -1.0, 1.5), (5.0, -1.0, 3.0), (0.5, -1.0, 0.8)]
  for r, a, expected in cases:
    args = one_token([r], [a])
    loss, _ = maybe_jit(lambda *x: objectives.ppo_dual_clip(*x, dual_clip_c=3.0), jit)(*args)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_k3_example():
  value = objectives.kl_k3(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.4])))
  np.testing.assert_allclose(float(value[0]), 0.8 - np.log(0.8) - 1.0, rtol=1e-4)
  np.testing.assert_allclose(float(value[0]), 0.02314, atol=1e-5)


@pytest.mark.parametrize("jit", JIT)
def test_dr_grpo_constant_normaliser(jit):
  # Two on-policy sequences whose token losses sum to −6 and +3: (−6 + 3)/(2·3000) = −5e-4.
  logp = jnp.full((2, 3), -1.0)
  mask = jnp.ones((2, 3))
  adv = jnp.array([2.0, -1.0])  # ℓ = −Â per token at r = 1 → sums −6 and +3
  loss, _ = maybe_jit(lambda *x: objectives.dr_grpo(*x, max_len=3000), jit)(logp, logp, adv, mask)
  np.testing.assert_allclose(float(loss), -5e-4, rtol=1e-5)


@pytest.mark.parametrize("jit", JIT)
def test_gspo_example_is_clipped_with_zero_gradient(jit):
  delta = jnp.array([[0.1, -0.05, 0.0, 0.15]])
  old = jnp.full((1, 4), -1.0)
  logp = old + delta
  mask = jnp.ones((1, 4))
  np.testing.assert_allclose(float(jnp.exp(objectives.sequence_log_ratio(delta, mask))[0]), 1.05127, rtol=1e-5)
  fn = maybe_jit(jax.value_and_grad(lambda lp: objectives.gspo(lp, old, jnp.array([1.0]), mask)[0]), jit)
  loss, grad = fn(logp)
  np.testing.assert_allclose(float(loss), -1.0004, rtol=1e-6)
  assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("jit", JIT)
def test_sapo_gate_values_and_gradient_weights(jit):
  # r = 1, Â = 1, τ = 1 → loss −2, weight 1; r = 1.2 → f = 2.19934, w·r = 1.18808;
  # r = 1.5, Â = −1, τ_neg = 1.05 → f = 2.39359, w·r = 1.40121.
  for r, a, f_expected, wr_expected in [(1.0, 1.0, 2.0, 1.0), (1.2, 1.0, 2.19934, 1.18808),
                                        (1.5, -1.0, 2.39359, 1.40121)]:
    logp, old, adv, mask = one_token([r], [a])
    fn = maybe_jit(jax.value_and_grad(lambda lp: objectives.sapo(lp, old, adv, mask, tau_pos=1.0, tau_neg=1.05)[0]),
                   jit)
    loss, grad = fn(logp)
    np.testing.assert_allclose(float(loss), -f_expected * a, rtol=1e-5)
    np.testing.assert_allclose(float(grad[0, 0]), -wr_expected * a, rtol=1e-4)


def test_dcpo_bounds_examples():
  lo, hi = objectives.dcpo_bounds(jnp.log(jnp.array([0.9, 0.01])), eps_low=0.16, eps_high=0.2, max_high=10.0)
  np.testing.assert_allclose(np.asarray(lo), [0.7687, 0.5], atol=1e-4)
  np.testing.assert_allclose(np.asarray(hi), [1.1872, 5.0], atol=1e-4)


def test_minpro_prefix_min_weights():
  rho = jnp.array([[1.2, 0.5, 1.1, 0.9]])
  w = jnp.exp(objectives.prefix_min_log_weight(jnp.log(rho), jnp.ones_like(rho)))
  np.testing.assert_allclose(np.asarray(w), [[1.0, 1.2, 0.5, 0.5]], rtol=1e-6)


@pytest.mark.parametrize("jit", JIT)
def test_gmpo_examples(jit):
  delta = jnp.array([[0.5, -0.6, 0.1]])
  old = jnp.full((1, 3), -2.0)
  mask = jnp.ones((1, 3))
  fn = maybe_jit(lambda adv: objectives.gmpo(old + delta, old, adv, mask, clip_c=0.4)[0], jit)
  np.testing.assert_allclose(float(fn(jnp.array([1.0]))), -0.96722, rtol=1e-5)
  np.testing.assert_allclose(float(fn(jnp.array([-1.0]))), 1.06894, rtol=1e-5)


def test_cispo_weights_example():
  w = objectives.cispo_weight(jnp.array([0.5, 1.1, 1.5]), eps_low=10.0, eps_high=0.2)
  np.testing.assert_allclose(np.asarray(w), [0.5, 1.1, 1.2], rtol=1e-6)
  w_trl = objectives.cispo_weight(jnp.array([0.5, 6.0]), eps_low=10.0, eps_high=5.0, cap_mode="absolute")
  np.testing.assert_allclose(np.asarray(w_trl), [0.5, 5.0], rtol=1e-6)


def test_tis_mis_icepop_table():
  k = jnp.array([[0.3, 1.5, 2.5, 6.0]])
  old = jnp.log(k)
  roll = jnp.zeros_like(old)
  mask = jnp.ones_like(old)
  np.testing.assert_allclose(np.asarray(objectives.tis_weights(old, roll, mask, cap=2.0)), [[0.3, 1.5, 2.0, 2.0]],
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(objectives.mis_weights(old, roll, mask, low=0.5, high=2.0)),
                             [[0.0, 1.5, 0.0, 0.0]], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(objectives.mis_weights(old, roll, mask, low=0.5, high=5.0)),
                             [[0.0, 1.5, 2.5, 0.0]], rtol=1e-5)


def test_gtpo_conflict_example():
  a, b, c, d, x = 1, 2, 3, 4, 5
  tokens = jnp.array([[a, b, c, d], [a, b, x, d]], jnp.int32)
  delta, n_conf = objectives.gtpo_conflict_weights(tokens, jnp.ones((2, 4)), jnp.array([1.0, -1.0]), group_size=2)
  np.testing.assert_allclose(np.asarray(delta), [[2, 2, 1, 2], [0, 0, 1, 0]])
  np.testing.assert_allclose(np.asarray(n_conf), [3, 3])


def test_gtpo_backward_conflicts_align_on_each_rows_last_token():
  # Different lengths: shared suffix [y z] is found from each row's own end.
  tokens = jnp.array([[7, 8, 1, 2, 0], [9, 1, 2, 0, 0]], jnp.int32)
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], jnp.float32)
  delta, n_conf = objectives.gtpo_conflict_weights(tokens, mask, jnp.array([0.5, -0.5]), group_size=2)
  np.testing.assert_allclose(np.asarray(delta), [[1, 1, 2, 2, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_allclose(np.asarray(n_conf), [2, 2])


def test_hapo_paper_example():
  """Paper semantics: Â = 1, ĥ = 0.5, r = 1.3 outside N = (0.9, 1.15) → A = 1.5 (ε_high' = 0.3)."""
  # Entropies chosen so that ĥ = [1, 0.5, 0, −1] for the four tokens (pivot = median-ish).
  h = np.array([0.0, 0.5, 0.0, -1.0])
  # Recover ĥ through the public normaliser on a constructed entropy vector: e = log H with scale s.
  entropy = jnp.exp(jnp.asarray(h))[None, :]
  h_hat = objectives.normalized_entropy(entropy, jnp.ones((1, 4)), pivot=0.5, reproduce_code_sign=False)
  assert float(h_hat[0, 1]) == pytest.approx(1.0)  # the largest above the pivot normalises to 1
  assert float(h_hat[0, 3]) == pytest.approx(-1.0)
  # The advantage redistribution rule itself, with ĥ = 0.5 set directly through the entropy of token 1.
  entropy = jnp.exp(jnp.array([[0.0, 0.5, 1.0, -1.0]]))
  h_hat = objectives.normalized_entropy(entropy, jnp.ones((1, 4)), pivot=0.25, reproduce_code_sign=False)
  assert float(h_hat[0, 1]) == pytest.approx(0.5)
  r = jnp.array([[1.0, 1.25, 1.0, 1.0]])  # outside N = (0.9, 1.15), inside the clip bound 1.3
  loss_fn = jax.grad(lambda lp: objectives.hapo(lp, jnp.zeros((1, 4)), jnp.array([1.0]), jnp.ones((1, 4)),
                                                entropy=entropy, entropy_pivot=0.25, reproduce_code_sign=False,
                                                agg="seq-mean-token-sum")[0])
  grad = loss_fn(jnp.log(r))
  # Token 1 uses A = Â(1 + ĥ) = 1.5 on the unclipped side: gradient −A·r.
  np.testing.assert_allclose(float(grad[0, 1]), -1.5 * 1.25, rtol=1e-5)
  # Token 3 (ĥ = −1, r = 1 inside its neutral zone) uses A_ent = Â(1 − 1) = 0; token 2 (ĥ = 1, r in N) uses Â.
  np.testing.assert_allclose(np.asarray(grad[0, 2:]), [-1.0, 0.0], atol=1e-6)


def test_hapo_code_sign_never_marks_low_entropy():
  entropy = jnp.exp(jnp.array([[0.0, 0.5, 1.0, -1.0, -2.0]]))
  code = objectives.normalized_entropy(entropy, jnp.ones((1, 5)), pivot=0.5, reproduce_code_sign=True)
  paper = objectives.normalized_entropy(entropy, jnp.ones((1, 5)), pivot=0.5, reproduce_code_sign=False)
  assert np.all(np.asarray(code) >= 0)
  assert np.any(np.asarray(paper) < 0)
  np.testing.assert_allclose(np.abs(np.asarray(code)), np.abs(np.asarray(paper)), rtol=1e-6)


def test_sentence_segments_attach_delimiters_to_the_preceding_segment():
  tokens = jnp.array([[5, 6, 0, 7, 0, 8]], jnp.int32)  # 0 is the delimiter
  seg = objectives.sentence_segment_ids(tokens, jnp.ones((1, 6)), delimiter_ids=[0])
  np.testing.assert_array_equal(np.asarray(seg), [[0, 0, 0, 1, 1, 2]])


@pytest.mark.parametrize("jit", JIT)
def test_topr_truncates_negative_samples_only(jit):
  # Row 0: negative reward, Σ Δ = −0.2 → w = e^−0.2 = 0.8187; row 1: positive reward → w = 1.
  old = jnp.full((2, 2), -1.0)
  logp = old + jnp.array([[-0.1, -0.1], [0.3, 0.3]])
  mask = jnp.ones((2, 2))
  rewards = jnp.array([-1.0, 2.0])
  fn = maybe_jit(jax.grad(lambda lp: objectives.topr(lp, old, rewards, mask, agg="seq-mean-token-sum")[0]), jit)
  grad = fn(logp)
  np.testing.assert_allclose(np.asarray(grad), [[0.8187 / 2, 0.8187 / 2], [-1.0, -1.0]], atol=1e-4)


@pytest.mark.parametrize("jit", JIT)
def test_minirl_masks_tokens_outside_the_trust_region(jit):
  # Â = +1: r = 1.5 (> 1.2) is dropped, r = 1.1 kept; Â = −1: r = 0.5 (< 0.8) dropped, r = 0.9 kept.
  r = jnp.array([[1.5, 1.1], [0.5, 0.9]])
  old = jnp.zeros((2, 2))
  roll = jnp.log(jnp.array([[1.0, 0.5], [1.0, 1.0]]))  # π_old/μ = 2 on token (0, 1)
  fn = maybe_jit(jax.grad(lambda lp: objectives.minirl(lp, old, jnp.array([1.0, -1.0]), jnp.ones((2, 2)),
                                                       rollout_logp=roll)[0]), jit)
  grad = fn(jnp.log(r))
  # d/dlogp of −w·r·Â = −w·r·Â, summed per sequence, averaged over 2 sequences.
  np.testing.assert_allclose(np.asarray(grad), [[0.0, -2 * 1.1 / 2], [0.0, 0.9 / 2]], rtol=1e-5)


def test_k3_plus_has_k3_value_and_k2_gradient():
  logp, ref = jnp.array([-0.3, -2.0]), jnp.array([-1.0, -1.5])
  np.testing.assert_allclose(np.asarray(objectives.kl_k3_plus(logp, ref)), np.asarray(objectives.kl_k3(logp, ref)))
  grad = jax.grad(lambda lp: objectives.kl_k3_plus(lp, ref).sum())(logp)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(logp - ref), rtol=1e-6)
