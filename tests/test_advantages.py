"""Advantage estimators: the specification's toy examples, float64 references, invariants, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import advantages as A
from reference import advantages_np as ref

JIT = [False, True]


def run(fn, *args, jit=False, **kw):
  f = (lambda *a: fn(*a, **kw))
  return jax.jit(f)(*args) if jit else f(*args)


@pytest.mark.parametrize("jit", JIT)
def test_group_toys(jit):
  r = jnp.array([[1.0, 0, 0, 0]])
  np.testing.assert_allclose(run(A.grpo, r, jit=jit, eps=0.0), [[1.5, -0.5, -0.5, -0.5]], rtol=1e-6)
  np.testing.assert_allclose(run(A.dr_grpo, r, jit=jit), [[0.75, -0.25, -0.25, -0.25]], rtol=1e-6)
  np.testing.assert_allclose(run(A.rloo, r, jit=jit), [[1, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6)
  ng = run(A.ngrpo, jnp.array([[0.0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]), jit=jit)
  np.testing.assert_allclose(ng, [[-0.4472] * 4, [1.0954, -0.7303, -0.7303, -0.7303], [0] * 4], atol=1e-4)


@pytest.mark.parametrize("jit", JIT)
def test_grpo_matches_reference_and_constant_groups_are_zero(jit):
  r = np.random.default_rng(0).normal(size=(5, 6))
  r[2] = 3.0
  out = np.asarray(run(A.grpo, jnp.asarray(r, jnp.float32), jit=jit))
  np.testing.assert_allclose(out, ref.grpo(r), rtol=1e-5, atol=1e-5)
  assert np.all(out[2] == 0.0) and np.all(np.isfinite(out))


def test_one_sample_groups_follow_verl():
  r = jnp.array([[0.7], [0.0]])
  for name in ("grpo", "dr_grpo", "rloo", "ngrpo"):
    np.testing.assert_allclose(A.get(name)(r), r)


def test_bad_rewards_are_errors():
  with pytest.raises(ValueError, match="rewards must be \\[P, G\\]"):
    A.grpo(jnp.ones((4,)))
  with pytest.raises(ValueError, match="NaN or inf"):
    A.grpo(jnp.array([[1.0, jnp.nan]]))
  with pytest.raises(ValueError, match="Unknown advantage estimator 'grpoo'"):
    A.get("grpoo")
  with pytest.raises(ValueError, match="dcpo needs groups of at least 2"):
    A.dcpo(jnp.ones((2, 1)), jnp.array([0, 1]), A.init_reward_stats(2))
  with pytest.raises(ValueError, match="tokens must be \\[P, G, T\\]"):
    A.tempo(jnp.zeros((1, 3, 4), jnp.int32), jnp.ones((1, 3, 4)), jnp.ones((1, 4)))


# The TEMPO toy tree: s1 = a b c (1), s2 = a b d (0), s3 = a e f (1), s4 = g h (0).
TOY_TOKENS = np.array([[[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 0]]], np.int32)
TOY_MASK = np.array([[[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]]], np.float32)
TOY_R = np.array([[1.0, 0.0, 1.0, 0.0]])


@pytest.mark.parametrize("jit", JIT)
def test_tempo_toy_tree(jit):
  out = np.asarray(run(A.tempo, TOY_TOKENS, TOY_MASK, jnp.asarray(TOY_R, jnp.float32), jit=jit))
  expected = [[1.1547, 0.5773, 1.7320], [-0.5773, -1.1547, -1.7320], [1.1547, 1.4434, 0.8660], [-1.7320, -0.8660, 0]]
  np.testing.assert_allclose(out[0], expected, atol=1e-4)
  np.testing.assert_allclose(out, ref.tempo(TOY_TOKENS, TOY_MASK, TOY_R), atol=1e-5)


@pytest.mark.parametrize("jit", JIT)
def test_tempo_matches_the_reference_procedure_on_random_trees(jit):
  rng = np.random.default_rng(1)
  P, G, T = 3, 6, 9
  tokens = rng.integers(0, 2, (P, G, T)).astype(np.int32)   # small alphabet: many shared prefixes
  lengths = rng.integers(1, T + 1, (P, G))
  mask = (np.arange(T)[None, None, :] < lengths[..., None]).astype(np.float32)
  r = rng.integers(0, 2, (P, G)).astype(np.float64)
  r[0, 0] = 1 - r[0, 1]  # at least one group with signal
  out = np.asarray(run(A.tempo, tokens, mask, jnp.asarray(r, jnp.float32), jit=jit))
  np.testing.assert_allclose(out, ref.tempo(tokens, mask, r), atol=1e-5)


def test_tempo_reduces_to_grpo_wherever_no_sibling_branches():
  """TD term = V(s_{j+1}) − V(s_j) vanishes unless the group splits at token j.

  With no shared prefix beyond the prompt, every response splits from the others at its first token, so
  there TD = R_i − μ (the official procedure's value: A = 2·GRPO at j = 0, the spec's toy s4 = [−1.732, …]),
  and from the second token on tempo == grpo exactly.
  """
  rng = np.random.default_rng(2)
  P, G, T = 2, 5, 6
  tokens = (np.arange(G)[None, :, None] * 10 + rng.integers(0, 3, (P, G, T))).astype(np.int32)  # distinct firsts
  mask = np.ones((P, G, T), np.float32)
  r = jnp.asarray(rng.normal(size=(P, G)), jnp.float32)
  out = np.asarray(A.tempo(tokens, mask, r))
  grpo = np.asarray(A.grpo(r))
  np.testing.assert_allclose(out[..., 1:], np.broadcast_to(grpo[..., None], out[..., 1:].shape), atol=1e-5)
  np.testing.assert_allclose(out[..., 0], 2 * grpo, atol=1e-5)
  # With shared prefixes: on tokens where no sibling diverges the TD term vanishes → GRPO's value.
  out = np.asarray(A.tempo(TOY_TOKENS, TOY_MASK, jnp.asarray(TOY_R, jnp.float32)))
  grpo = np.asarray(A.grpo(jnp.asarray(TOY_R, jnp.float32)))[0]
  assert out[0, 3, 1] == pytest.approx(grpo[3], abs=1e-5)  # s4 alone after "g"
  assert out[0, 2, 2] == pytest.approx(grpo[2], abs=1e-5)  # s3 alone after "a e"
  assert out[0, 0, 1] != pytest.approx(grpo[0], abs=1e-3)  # s1 at "b": s3 branches off there


def test_tempo_permuting_samples_permutes_advantages_and_constant_rewards_give_zero():
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, 2, (1, 5, 6)).astype(np.int32)
  mask = np.ones((1, 5, 6), np.float32)
  r = jnp.asarray(rng.normal(size=(1, 5)), jnp.float32)
  perm = np.array([3, 1, 4, 0, 2])
  a = np.asarray(A.tempo(tokens, mask, r))
  b = np.asarray(A.tempo(tokens[:, perm], mask[:, perm], r[:, perm]))
  np.testing.assert_allclose(b, a[:, perm], atol=1e-6)
  assert np.all(np.asarray(A.tempo(tokens, mask, jnp.ones((1, 5)))) == 0.0)
  assert np.all(np.asarray(A.tempo(tokens[:, :1], mask[:, :1], r[:, :1])) == 0.0)  # G = 1 convention


TREEPO_PATHS = np.array([[[10, 20, -1], [10, 21, -1], [11, 22, 30], [11, 22, 31]]], np.int32)
TREEPO_R = np.array([[1.0, 0.0, 1.0, 1.0]])
TREEPO_MASK = (np.arange(6)[None, :] < np.array([4, 4, 6, 6])[:, None]).astype(np.float32)[None]


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("weighting, expected", [("average", [1.1000, -1.8333, 0.2444, 0.2444]),
                                                 ("group_size", [0.9129, -1.8959, 0.3277, 0.3277])])
def test_treepo_toy_tree(weighting, expected, jit):
  out = np.asarray(run(A.treepo, jnp.asarray(TREEPO_R, jnp.float32), TREEPO_PATHS, TREEPO_MASK, jit=jit,
                       weighting=weighting))
  np.testing.assert_allclose(out[0, :, 0], expected, atol=1e-4)
  np.testing.assert_allclose(out, ref.treepo(TREEPO_R, TREEPO_PATHS, TREEPO_MASK, weighting=weighting), atol=1e-5)
  pre = np.asarray(A.treepo(jnp.asarray(TREEPO_R, jnp.float32), TREEPO_PATHS, TREEPO_MASK, whiten=False))[0, :, 0]
  if weighting == "average":
    np.testing.assert_allclose(pre, [0.375, -0.625, 0.0833, 0.0833], atol=1e-4)


@pytest.mark.parametrize("jit", JIT)
def test_spo_chain_toy(jit):
  p = np.array([[[0.95, 0.5, 0.99, 0.3, 0.97, 0.6, 0.98, 0.99]]])
  values = np.zeros((1, 1, 8))
  values[0, 0, [0, 2, 4]] = [0.5, 0.75, 0.25]
  mask = np.ones((1, 1, 8), np.float32)
  adv, loss_mask = run(A.spo_chain, p, mask, values, jnp.array([[1.0]]), jit=jit, interval=1)
  np.testing.assert_allclose(np.asarray(adv)[0, 0], [0, 0.25, 0, -0.5, 0, 0.75, 0, 0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(loss_mask)[0, 0], (p[0, 0] <= 0.9).astype(float))
  adv, _ = A.spo_chain(p, mask, values, jnp.array([[1.0]]), interval=1, prob_mask=False)
  np.testing.assert_allclose(np.asarray(adv)[0, 0], [0, 0.25, 0.25, -0.5, -0.5, 0.75, 0.75, 0.75], atol=1e-6)


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("interval", [1, 2, 5])
@pytest.mark.parametrize("prob_mask", [True, False])
def test_spo_chain_matches_the_float64_reference_on_random_responses(interval, prob_mask, jit):
  """Ragged masks, cut points anywhere (the prompt state c = −1 included: first tokens are often below 0.9)."""
  from reference import advantages_tree_np as tref
  rng = np.random.default_rng(11 + interval)
  P, G, T = 3, 4, 12
  probs = np.where(rng.random((P, G, T)) < 0.5, rng.uniform(0.05, 0.9, (P, G, T)), rng.uniform(0.9, 1.0, (P, G, T)))
  mask = (np.arange(T)[None, None, :] < rng.integers(1, T + 1, (P, G))[..., None]).astype(np.float32)
  values = rng.random((P, G, T))            # MC value of the state after token t
  prompt_values = rng.random((P, G))        # MC value of the prompt alone (c = −1)
  scores = rng.integers(0, 2, (P, G)).astype(np.float64)
  adv, loss_mask = run(A.spo_chain, probs, mask, values, jnp.asarray(scores, jnp.float32), jit=jit, interval=interval,
                       prob_mask=prob_mask, prompt_values=jnp.asarray(prompt_values, jnp.float32))
  cuts = [[tref.spo_chain_cutpoints(probs[i, j], mask[i, j], interval=interval) for j in range(G)] for i in range(P)]
  assert any(c and c[0] == -1 for row in cuts for c in row) and any(len(c) > 1 for row in cuts for c in row)
  c_max = max(len(c) for row in cuts for c in row)
  ref_values = np.full((P * G, c_max), np.nan)
  for i in range(P):
    for j in range(G):
      for k, c in enumerate(cuts[i][j]):
        ref_values[i * G + j, k] = prompt_values[i, j] if c == -1 else values[i, j, c]
  expected = tref.spo_chain(probs.reshape(P * G, T), mask.reshape(P * G, T), ref_values, scores.reshape(-1),
                            interval=interval, prob_mask=prob_mask, whiten_advantages=False).reshape(P, G, T)
  np.testing.assert_allclose(np.asarray(adv), expected, atol=1e-6)
  keep = mask * (probs <= 0.9) if prob_mask else mask
  np.testing.assert_array_equal(np.asarray(loss_mask), keep)
  cut, prompt_cut = A.spo_chain_cut_points(probs, mask, interval=interval)
  for i in range(P):
    for j in range(G):
      got = ([-1] if prompt_cut[i, j] else []) + [int(t) for t in np.nonzero(np.asarray(cut[i, j]))[0]]
      assert got == cuts[i][j]


def test_spo_chain_without_prompt_values_gives_the_first_segment_zero():
  probs = np.array([[[0.5, 0.95, 0.3, 0.99]]])   # token 0 below 0.9: the official code has the cut c = −1
  mask = np.ones_like(probs)
  values = np.array([[[0.0, 0.75, 0.0, 0.0]]])
  with_prompt, _ = A.spo_chain(probs, mask, values, jnp.array([[1.0]]), interval=1, prob_mask=False,
                               prompt_values=jnp.array([[0.25]]))
  np.testing.assert_allclose(np.asarray(with_prompt)[0, 0], [0.5, 0.5, 0.25, 0.25], atol=1e-6)
  without, _ = A.spo_chain(probs, mask, values, jnp.array([[1.0]]), interval=1, prob_mask=False)
  np.testing.assert_allclose(np.asarray(without)[0, 0], [0.0, 0.0, 0.25, 0.25], atol=1e-6)
  with pytest.raises(ValueError, match="interval"):
    A.spo_chain_cut_points(probs, mask, interval=0)


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("norm", ["openrlhf", "verl", "openrlhf_verl_whiten"])
def test_reinforce_pp_baseline_with_kl_matches_the_float64_reference(norm, jit):
  """β > 0: verl centres R − β Σ_t kl_t in the group and gives each token of a row the same value; OpenRLHF
  centres R only and subtracts the (clamped) KL that follows each token. Garbage kl on padding changes nothing."""
  rng = np.random.default_rng(12)
  P, G, T = 3, 4, 6
  mask = (np.arange(T)[None, None, :] < rng.integers(1, T + 1, (P, G))[..., None]).astype(np.float32)
  r = rng.integers(0, 2, (P, G)).astype(np.float32)
  kl = rng.normal(0.0, 0.5, (P, G, T)).astype(np.float32)
  kl[0, 0, 0] = 14.0                                    # past OpenRLHF's ±10 clamp
  got = run(A.reinforce_pp_baseline, jnp.asarray(r), mask, jit=jit, kl=jnp.asarray(np.where(mask > 0, kl, np.nan)),
            beta=0.3, norm=norm)
  want = ref.reinforce_pp_baseline(r, mask, style=norm, kl=kl, beta=0.3)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  rows = np.asarray(got)
  if norm == "verl":   # one value per row
    np.testing.assert_allclose(rows * mask, (rows.sum(-1) / mask.sum(-1))[..., None] * mask, atol=1e-5)
  else:                # the KL tail makes tokens of a row differ
    assert np.abs(rows[0, 0, 0] - rows[0, 0, 1]) > 1e-3
  assert not np.allclose(got, run(A.reinforce_pp_baseline, jnp.asarray(r), mask, jit=jit, norm=norm), atol=1e-3)


@pytest.mark.parametrize("jit", JIT)
def test_reinforce_pp_baseline_and_gae_match_references(jit):
  rng = np.random.default_rng(4)
  P, G, T = 2, 3, 5
  mask = (np.arange(T)[None, None, :] < rng.integers(1, T + 1, (P, G))[..., None]).astype(np.float32)
  r = rng.normal(size=(P, G))
  out = run(A.reinforce_pp_baseline, jnp.asarray(r, jnp.float32), mask, jit=jit)
  np.testing.assert_allclose(np.asarray(out), ref.reinforce_pp_baseline(r, mask, style="openrlhf"), atol=1e-5)
  verl = run(A.reinforce_pp_baseline, jnp.asarray(r, jnp.float32), mask, jit=jit, norm="verl")
  np.testing.assert_allclose(np.asarray(verl), ref.reinforce_pp_baseline(r, mask, style="verl"), atol=1e-5)
  values = rng.normal(size=(P, G, T)) * mask
  adv, ret = run(A.gae, jnp.asarray(r, jnp.float32), jnp.asarray(values, jnp.float32), mask, jit=jit, gamma=0.9,
                 lam=0.8)
  ref_adv, ref_ret = ref.gae(r, values, mask, gamma=0.9, lam=0.8)
  np.testing.assert_allclose(np.asarray(adv), ref_adv, atol=1e-4)
  np.testing.assert_allclose(np.asarray(ret), ref_ret, atol=1e-5)


def test_reinforce_pp_without_kl_puts_the_reward_on_every_token_before_normalising():
  mask = np.ones((1, 2, 3), np.float32)
  out = np.asarray(A.reinforce_pp(jnp.array([[1.0, 0.0]]), mask))
  np.testing.assert_allclose(out, [[[1, 1, 1], [-1, -1, -1]]], atol=1e-4)


def test_gigpo_toy():
  # Two trajectories (R = 1, 0) both visit anchor X: traj 1 at t = 0 (G = 0.9025), traj 2 at t = 1 (G = 0).
  ep = jnp.array([[1.0, 0.0]])
  step_r = jnp.array([[[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
  anchors = jnp.array([[[7, 1, 2], [3, 7, 4]]])
  mask = jnp.ones((1, 2, 3))
  out = np.asarray(A.gigpo(ep, step_r, anchors, mask, gamma=0.95, mode="mean_norm"))
  assert out[0, 0, 0] == pytest.approx(0.5 + 0.45125, abs=1e-5)
  assert out[0, 1, 1] == pytest.approx(-0.5 - 0.45125, abs=1e-5)
  assert out[0, 0, 1] == pytest.approx(0.5) and out[0, 1, 0] == pytest.approx(-0.5)  # singleton anchors


def test_brpo_dars_rank_sgrpo_toys():
  out = np.asarray(A.brpo(jnp.array([[[0.0, 1.0], [1.0, 1.0]]]), prior=jnp.array([0.5, 0.5])))
  np.testing.assert_allclose(out[0, 0], [-0.25, 0.25], atol=1e-6)
  acc = jnp.array([0.0, 0.125, 0.25, 0.375, 0.5])
  np.testing.assert_array_equal(np.asarray(A.dars(acc, schedule="ET")), [24, 11, 3, 1, 0])
  np.testing.assert_array_equal(np.asarray(A.dars(acc, schedule="HW")), [24, 24, 8, 3, 0])
  np.testing.assert_allclose(np.asarray(A.rank_rewards(jnp.array([[[1, 0, 1, 0]]]), mode="log_decay"))[0, 0],
                             [1.5, 0.5, 0.5, 0.0], atol=1e-4)
  rank = np.asarray(A.rank_grpo(jnp.array([[[1, 0], [0, 0], [1, 1]]])))
  np.testing.assert_allclose(rank[0, :, 0], (np.array([1, 0, 1]) - 2 / 3) / (np.std([1, 0, 1], ddof=1) + 1e-4),
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(A.s_grpo(jnp.array([[0, 1, 1, 0, 1]]))),
                             [np.array([0, 1, 0.5, 0, 0.25]) - 1.75 / 5], atol=1e-6)


def test_dcpo_smooth_standardisation_over_visits():
  stats = A.init_reward_stats(3)
  r1 = jnp.array([[1.0, 0.0, 0.0, 1.0]])
  adv, stats = A.dcpo(r1, jnp.array([2]), stats)
  np.testing.assert_allclose(np.asarray(adv), np.asarray(A.grpo(r1, eps=0.0)), atol=1e-5)  # first visit: A_new
  r2 = jnp.array([[1.0, 1.0, 1.0, 1.0]])  # no variance now: the history still gives a signal
  adv2, stats = A.dcpo(r2, jnp.array([2]), stats)
  mu_tot = (0.5 + 1.0) / 2
  sd_tot = np.sqrt((np.std([1, 0, 0, 1], ddof=1) ** 2 + 0 + 0.5 * 0.25) / 2)
  np.testing.assert_allclose(np.asarray(adv2), 0.5 * (1 - mu_tot) / sd_tot * np.ones((1, 4)), rtol=1e-5)
  assert int(stats.count[2]) == 2 and int(stats.count[0]) == 0


def test_single_stream_tracker_and_rho():
  # ρ leaves the clip band [0.875, 0.96] only for 0.0035 < D < 0.0116.
  np.testing.assert_allclose(np.asarray(A.tracker_rho(jnp.array([0.0, 0.005, 0.02, 1.0]))),
                             [0.96, 2 ** (-0.005 / 0.06), 0.875, 0.875], rtol=1e-6)
  tracker = A.init_value_tracker(jnp.array([4.0, 0.0]), jnp.array([8.0, 0.0]))
  adv, new, w = A.single_stream(jnp.array([[1.0], [0.0]]), jnp.array([0, 1]), tracker)
  # p̂ = 0.5 for both (4.5/9 and 0.5/1) → a = [0.5, −0.5] → standardised ±0.7071.
  np.testing.assert_allclose(np.asarray(adv)[:, 0], [0.70710677, -0.70710677], atol=1e-5)
  np.testing.assert_allclose(float(new.alpha[0]), 0.96 * float(tracker.alpha[0]) + 1.0, rtol=1e-6)
  assert w.shape == (2,) and float(jnp.sum(w)) == pytest.approx(1.0)


def test_forking_tokens_keeps_the_top_entropy_fraction():
  h = jnp.array([[0.1, 2.0, 0.5, 3.0, 0.2], [1.0, 0.0, 0.0, 0.3, 9.0]])
  m = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
  top = np.asarray(A.forking_tokens(h, m, rho=0.25))  # 9 valid, ρN = 2.25 → k = ⌈2.25⌉ = 3 (official): H ≥ 1.0
  np.testing.assert_array_equal(top, [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]])
  floor = np.asarray(A.forking_tokens(h, m, rho=0.25, rounding="floor"))  # k = 2: H ≥ 2.0
  np.testing.assert_array_equal(floor, [[0, 1, 0, 1, 0], [0, 0, 0, 0, 0]])
  bottom = np.asarray(A.forking_tokens(h, m, rho=0.25, keep="bottom"))
  np.testing.assert_array_equal(top + bottom, np.asarray(m, float))


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("n, rho, ceil_k, floor_k", [(9, 0.25, 3, 2), (15, 0.2, 3, 3), (7, 0.2, 2, 1), (3, 0.1, 1, 1),
                                                     (10, 0.35, 4, 3), (1000, 0.2, 200, 200), (999, 0.2, 200, 199)])
def test_forking_tokens_rounds_rho_n_up_as_the_official_code(n, rho, ceil_k, floor_k, jit):
  """k = max(1, int(ρN + 0.9999)) (official 80/20 code); ρN = 0.2·15 = 3.0000000000000004 in float64 keeps 3."""
  h = jnp.asarray(np.random.default_rng(n).permutation(n).astype(np.float32))[None]   # distinct entropies
  m = jnp.ones((1, n))
  fn = jax.jit(A.forking_tokens, static_argnames=("rho", "keep", "rounding")) if jit else A.forking_tokens
  assert int(np.asarray(fn(h, m, rho=rho)).sum()) == ceil_k == max(1, int(rho * n + 0.9999))
  assert int(np.asarray(fn(h, m, rho=rho, rounding="floor")).sum()) == floor_k
  with pytest.raises(ValueError, match="rounding"):
    A.forking_tokens(h, m, rho=rho, rounding="round")


def test_seed_grpo_and_hicra():
  a = jnp.array([[1.0, -1.0, 0.5, -0.5]])
  same = A.seed_grpo(a, jnp.array([[3, 3, 3, 3]]))
  np.testing.assert_allclose(np.asarray(same), np.asarray(a))  # SE = 0 keeps A
  spread = A.seed_grpo(a, jnp.array([[0, 1, 2, 3]]), alpha=0.5)  # SE = log G → scale 0.5
  np.testing.assert_allclose(np.asarray(spread), 0.5 * np.asarray(a), rtol=1e-6)
  h = A.hicra(jnp.array([[1.0], [-2.0]]), jnp.array([[1, 0], [0, 1]]), alpha=0.2)
  np.testing.assert_allclose(np.asarray(h), [[1.2, 1.0], [-2.0, -1.6]], rtol=1e-6)


# A small tree: 0 → {1, 2}; 1 → leaves {3 (R=1), 4 (R=0)}; 2 → leaf {5 (R=1)}.
PARENT = jnp.array([[-1, 0, 0, 1, 1, 2]])
IS_LEAF = jnp.array([[False, False, False, True, True, True]])
LEAF_R = jnp.array([[0.0, 0, 0, 1, 0, 1]])


def test_tree_values_spo_tree_and_treerl():
  v = A.tree_node_values(LEAF_R, PARENT, IS_LEAF)
  np.testing.assert_allclose(np.asarray(v), [[0.75, 0.5, 1.0, 1.0, 0.0, 1.0]])
  adv, keep = A.spo_tree(v, PARENT)
  np.testing.assert_allclose(np.asarray(adv), [[0.0, -0.25, 0.25, 0.5, -0.5, 0.0]])
  np.testing.assert_array_equal(np.asarray(keep), [[False, True, True, True, True, False]])
  adv_g, _ = A.spo_tree(v, PARENT, mode="grpo")  # siblings {1, 2}: std_p 0.25; {3, 4}: 0.5; {5}: 0
  np.testing.assert_allclose(np.asarray(adv_g)[0, 1:5], [-1.0, 1.0, 1.0, -1.0], rtol=1e-5)
  r = A.treerl(v, PARENT, jnp.array([[3, 2, 1, 1, 1, 1]]))
  np.testing.assert_allclose(float(r[0, 1]), ((0.5 - 0.75) * 2) / np.sqrt(2), rtol=1e-6)
  np.testing.assert_allclose(float(r[0, 3]), (1 - 0.75) + (1 - 0.5), rtol=1e-6)


def pure_reference(r, sm, pos, mask, solved, G, T=0.1):
  B, K = r.shape
  Tn = mask.shape[1]
  rt = np.zeros((B, K))
  ntok = np.zeros((B, K))
  for i in range(B):
    idx = [k for k in range(K) if sm[i, k]]
    z = np.array([-r[i, k] / T for k in idx])
    w = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    prev = -1
    for j, k in enumerate(idx):
      rt[i, k] = w[j] * r[i, k]
      ntok[i, k] = pos[i, k] - prev
      prev = pos[i, k]
  lengths = mask.sum(1)
  rewards = np.zeros((B, Tn))
  for i in range(B):
    g0 = (i // G) * G
    others = [j for j in range(g0, g0 + G) if j != i]
    base = sum(rt[j].sum() for j in others) / sum(lengths[j] for j in others)
    for k in range(K):
      if sm[i, k]:
        rewards[i, pos[i, k]] += rt[i, k] - base * ntok[i, k]
    v = solved[i] - 1.0
    v_others = np.mean([solved[j] - 1.0 for j in others])
    rewards[i, int(lengths[i]) - 1] += v - v_others
  adv = np.zeros((B, Tn))
  for i in range(B):
    acc = 0.0
    for t in reversed(range(Tn)):
      acc += rewards[i, t]
      adv[i, t] = acc * mask[i, t]
    for k in range(K):
      if sm[i, k]:
        adv[i, pos[i, k]] = 0.0
  return adv


def test_pure_min_form_credit_matches_a_loop_reference():
  r = np.array([[0.5, -0.5, 0.0], [1.0, 1.0, 0.9], [-0.2, 0.3, 0.0], [0.1, 0.0, 0.0]])
  sm = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
  pos = np.array([[1, 3, 0], [0, 2, 4], [2, 4, 0], [1, 0, 0]])
  mask = (np.arange(6)[None] < np.array([5, 6, 6, 3])[:, None]).astype(np.float32)
  solved = np.array([0.0, 1.0, 1.0, 0.0])
  got = np.asarray(A.pure(r, sm, pos, mask, solved, group_size=2))
  np.testing.assert_allclose(got, pure_reference(r, sm, pos, mask, solved, 2), rtol=1e-5, atol=1e-6)


def test_d3s_thr_xrpo_and_gtpo_conflict():
  adv = jnp.array([[0.9, -0.1, -1.2, 0.4]])
  h = jnp.ones((1, 4, 5))
  m = jnp.ones((1, 4, 5))
  w = np.asarray(A.d3s(adv, h, m, sample_keep=0.5, token_keep=1.0))
  np.testing.assert_array_equal(w.sum(-1)[0], [5, 0, 5, 0])  # the two largest |A| rows, all their tokens
  w = np.asarray(A.d3s(adv, h * jnp.arange(5.0)[None, None, :], m, sample_keep=0.5, token_keep=0.4))
  assert w.sum() == 4 and np.all(w[0, :, :3] == 0)
  assert float(A.d3s_schedule(0, 100)) == 0.25 and float(A.d3s_schedule(100, 100)) == 1.0
  np.testing.assert_allclose(np.asarray(A.thr(jnp.array([2.0]), jnp.array([[1.0, -3.0, 0.0]]), jnp.ones((1, 3)))),
                             [[3.0, 1.0, 2.0]])
  x = A.xrpo_sharpen(jnp.array([[1.0, 1.0, -1.0]]), jnp.array([[1, 1, 0]]), jnp.array([[-0.2, -1.0, -3.0]]), lam=0.5)
  np.testing.assert_allclose(np.asarray(x), [[1.0, 1.2, -1.0]], rtol=1e-6)
  tokens = jnp.array([[[1, 2, 3, 4], [1, 2, 5, 4]]])
  delta, shaped = A.gtpo_conflict(tokens, jnp.ones((1, 2, 4)), jnp.array([[1.0, -1.0]]), jnp.full((1, 2, 4), 0.5))
  np.testing.assert_allclose(np.asarray(delta)[0], [[2, 2, 1, 2], [0, 0, 1, 0]])
  np.testing.assert_allclose(np.asarray(shaped), [[0.95, -1.05]], rtol=1e-6)


@pytest.mark.parametrize("jit", JIT)
def test_group_estimators_match_loop_references_on_random_rewards(jit):
  rng = np.random.default_rng(7)
  for shape in ((4, 5), (3, 2), (2, 1)):
    r = rng.normal(size=shape)
    r32 = jnp.asarray(r, jnp.float32)
    np.testing.assert_allclose(np.asarray(run(A.rloo, r32, jit=jit)), ref.rloo(r), rtol=1e-5, atol=1e-5)
    if shape[1] > 1:
      np.testing.assert_allclose(np.asarray(run(A.ngrpo, r32, jit=jit)), ref.ngrpo(r), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(np.asarray(run(A.grpo, r32, jit=jit)), ref.grpo(r), rtol=1e-5, atol=1e-5)


def test_dcpo_matches_the_loop_reference_over_three_visits():
  rng = np.random.default_rng(8)
  stats = A.init_reward_stats(4)
  ref_state = {}
  for visit in range(3):
    r = rng.integers(0, 2, (2, 6)).astype(np.float64)
    if visit == 1:
      r[0] = 1.0  # a zero-variance visit
    adv, stats = A.dcpo(jnp.asarray(r, jnp.float32), jnp.array([3, 1]), stats)
    want, ref_state = ref.dcpo(r, [3, 1], ref_state)
    np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-6)


def test_lp_reg_selection_matches_the_loop_reference():
  rng = np.random.default_rng(9)
  logp = rng.normal(-2.0, 1.0, (6, 40))
  proxy = logp + rng.normal(0.0, 0.5, (6, 40))
  adv = np.array([-1.0, 0.5, -0.2, -0.7, 1.0, -0.1])
  mask = (rng.uniform(size=(6, 40)) > 0.1).astype(np.float32)
  got = np.asarray(A.lp_reg(jnp.asarray(logp, jnp.float32), jnp.asarray(proxy, jnp.float32), jnp.asarray(adv),
                            jnp.asarray(mask), neg_frac=0.05))
  want = ref.lp_reg_select(logp.astype(np.float32).astype(np.float64), proxy.astype(np.float32).astype(np.float64),
                           np.broadcast_to(adv[:, None], logp.shape), mask, neg_frac=0.05)
  np.testing.assert_array_equal(got, want.astype(float))
  assert got.sum() > 0


@pytest.mark.parametrize("fn, kw, match", [
    (A.grpo, dict(eps=-1.0), "grpo: eps must be >= 0"),
    (A.grpo, dict(eps=float("nan")), "grpo: eps must be finite"),
    (A.grpo, dict(std_ddof=-1), "std_ddof must be >= 0"),
    (A.ngrpo, dict(add_max_reward_num=-1), "ngrpo: add_max_reward_num must be >= 0"),
    (A.ngrpo, dict(add_max_reward_num=1.5), "add_max_reward_num must be an int"),
    (A.ngrpo, dict(max_reward=float("nan")), "ngrpo: max_reward must be finite"),
    (A.ngrpo, dict(eps=-1e-3), "ngrpo: eps must be >= 0"),
])
@pytest.mark.parametrize("jit", JIT)
def test_group_hyperparameters_are_checked_at_trace_time(fn, kw, match, jit):
  with pytest.raises(ValueError, match=match):
    run(fn, jnp.array([[1.0, 0.0, 0.0]]), jit=jit, **kw)


@pytest.mark.parametrize("jit", JIT)
def test_constant_groups_give_exactly_zero_also_with_eps_zero(jit):
  r = jnp.array([[0.1, 0.1, 0.1], [1.0, 0.0, 0.0], [0.7, 0.7, 0.7]])
  for fn, kw in ((A.grpo, dict(eps=0.0)), (A.grpo, {}), (A.ngrpo, dict(eps=0.0, max_reward=0.7))):
    out = np.asarray(run(fn, r, jit=jit, **kw))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0 if fn is A.grpo else 2], 0.0)
  np.testing.assert_array_equal(np.asarray(run(A.grpo, r, jit=jit, eps=0.0))[2], 0.0)
  np.testing.assert_allclose(np.asarray(run(A.grpo, r, jit=jit, eps=0.0))[1], [2 / np.sqrt(3), -1 / np.sqrt(3),
                                                                                -1 / np.sqrt(3)], rtol=1e-6)
  # K = 0 virtual samples is GRPO
  np.testing.assert_allclose(run(A.ngrpo, r, jit=jit, add_max_reward_num=0), run(A.grpo, r, jit=jit), rtol=1e-6)


@pytest.mark.parametrize("jit", JIT)
def test_advantage_masks_must_be_binary(jit):
  r, kl = jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2, 3))
  mask = np.ones((1, 2, 3), np.float32)
  for bad in (0.5, -1.0, 2.0):
    mask[0, 1, 2] = bad
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
      A.reinforce_pp_baseline(r, jnp.asarray(mask), kl=kl)
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
      A.forking_tokens(jnp.ones((2, 3)), jnp.asarray(mask[0]))
  mask[0, 1, 2] = 0.0
  out = run(A.reinforce_pp_baseline, r, jnp.asarray(mask, bool), jit=jit)   # bool and 0/1 floats agree
  np.testing.assert_allclose(out, run(A.reinforce_pp_baseline, r, jnp.asarray(mask), jit=jit))


def test_token_level_hyperparameters_are_checked_and_a_traced_rho_is_allowed():
  r, mask = jnp.array([[1.0, 0.0]]), jnp.ones((1, 2, 3))
  for kw, match in ((dict(gamma=1.5), "gae: gamma must be <= 1"), (dict(lam=-0.1), "gae: lam must be >= 0"),
                    (dict(beta=float("nan")), "gae: beta must be finite")):
    with pytest.raises(ValueError, match=match):
      A.gae(r, jnp.zeros((1, 2, 3)), mask, **kw)
  h, m = jnp.arange(6.0).reshape(2, 3), jnp.ones((2, 3))
  for rho, match in ((0.0, "rho must be > 0"), (1.5, "rho must be <= 1"), (float("nan"), "rho must be finite")):
    with pytest.raises(ValueError, match=match):
      A.forking_tokens(h, m, rho=rho)
  traced = jax.jit(lambda rho: A.forking_tokens(h, m, rho=rho))(0.5)   # no concretization error
  np.testing.assert_array_equal(traced, A.forking_tokens(h, m, rho=0.5))
