"""More estimators against the independent float64 references (tests/reference/advantages*_np.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import advantages as A
from reference import advantages_np as ref

JIT = [False, True]


def maybe_jit(fn, jit):
  return jax.jit(fn) if jit else fn


@pytest.mark.parametrize("jit", JIT)
def test_reinforce_pp_with_kl_and_discount(jit):
  rng = np.random.default_rng(11)
  P, G, T = 2, 3, 6
  mask = (np.arange(T)[None, None] < rng.integers(1, T + 1, (P, G))[..., None]).astype(np.float32)
  r = rng.normal(size=(P, G))
  kl = rng.normal(0, 0.3, (P, G, T)) * mask
  got = maybe_jit(lambda r, m, k: A.reinforce_pp(r, m, kl=k, beta=0.1, gamma=0.9), jit)(
      jnp.asarray(r, jnp.float32), jnp.asarray(mask), jnp.asarray(kl, jnp.float32))
  want = ref.reinforce_pp(r, mask, kl=kl, beta=0.1, gamma=0.9)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("jit", JIT)
def test_rank_brpo_sgrpo_seed_dars(jit):
  rng = np.random.default_rng(12)
  hits = rng.integers(0, 2, (2, 5, 4))
  for mode in ("exp_inf", "log_decay"):
    got = maybe_jit(lambda h: A.rank_grpo(h, mode=mode), jit)(jnp.asarray(hits))
    want = ref.rank_grpo(ref.rank_grpo_rewards(hits, kind=mode))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  rbar = rng.uniform(size=(2, 4, 3))
  prior = np.array([0.2, 0.3, 0.5])
  for baseline in ("brpo", "v1only", "v2only", "none"):
    got = maybe_jit(lambda x: A.brpo(x, prior=jnp.asarray(prior, jnp.float32), baseline=baseline), jit)(
        jnp.asarray(rbar, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), ref.brpo(rbar, prior, baseline=baseline), rtol=1e-5, atol=1e-6)
  correct = rng.integers(0, 2, (3, 5)).astype(bool)
  np.testing.assert_allclose(np.asarray(maybe_jit(A.s_grpo, jit)(jnp.asarray(correct))), ref.s_grpo(correct),
                             atol=1e-6)
  r = rng.integers(0, 2, (3, 6)).astype(np.float64)
  r[0] = [1, 0, 0, 1, 1, 0]
  ids = rng.integers(0, 3, (3, 6))
  grpo_adv = np.asarray(A.grpo(jnp.asarray(r, jnp.float32)))
  got = A.seed_grpo(jnp.asarray(grpo_adv), jnp.asarray(ids), alpha=0.7)
  np.testing.assert_allclose(np.asarray(got), ref.seed_grpo(r, ids, alpha=0.7), rtol=1e-4, atol=1e-5)
  acc = rng.uniform(0, 0.6, 10)
  for schedule in ("ET", "HW"):
    for use_std in (False, True):
      np.testing.assert_array_equal(np.asarray(A.dars(jnp.asarray(acc, jnp.float32), schedule=schedule,
                                                       use_std=use_std)),
                                    ref.dars(acc, schedule=schedule, use_std=use_std))


def test_single_stream_pieces():
  succ, n_off = np.array([3.0, 0.0, 8.0]), np.array([8.0, 0.0, 8.0])
  tracker = A.init_value_tracker(jnp.asarray(succ), jnp.asarray(n_off))
  a0, b0 = (np.array(x) for x in zip(*[ref.single_stream_init(k, n) for k, n in zip(succ, n_off)]))
  np.testing.assert_allclose(np.asarray(tracker.alpha), a0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(tracker.beta), b0, rtol=1e-6)
  r = np.array([1.0, 0.0, 1.0])
  d = np.array([0.0, 0.006, 0.05])
  adv, new, weights = A.single_stream(jnp.asarray(r[:, None], jnp.float32), jnp.arange(3), tracker,
                                      kl_distance=jnp.asarray(d, jnp.float32))
  p_hat = a0 / (a0 + b0)
  np.testing.assert_allclose(np.asarray(adv)[:, 0], ref.single_stream_advantages(r, p_hat), rtol=1e-5, atol=1e-6)
  rho = np.array([ref.single_stream_rho(x) for x in d])
  alpha, beta = ref.single_stream_update(a0, b0, r, rho)
  np.testing.assert_allclose(np.asarray(new.alpha), alpha, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new.beta), beta, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(weights), ref.single_stream_weights(alpha / (alpha + beta)), rtol=1e-5)


def test_spo_tree_against_reference():
  parent = np.array([-1, 0, 0, 1, 1, 2, 2, 2])
  leaves = np.array([0, 0, 0, 1, 0, 1, 1, 0], np.float64)
  is_leaf = np.array([False, False, False, True, True, True, True, True])
  values = np.asarray(A.tree_node_values(jnp.asarray(leaves[None]), jnp.asarray(parent[None]), jnp.asarray(is_leaf[None])))[0]
  np.testing.assert_allclose(values, ref.spo_tree_values(parent, leaves), rtol=1e-6)
  for mode in ("rloo", "grpo"):
    adv, keep = A.spo_tree(jnp.asarray(values[None]), jnp.asarray(parent[None]), mode=mode)
    want = ref.spo_tree(parent, values, mode=mode)
    np.testing.assert_allclose(np.asarray(adv)[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(keep)[0], ref.spo_tree_keep(parent, values, want))
