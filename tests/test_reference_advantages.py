"""The float64 loop references reproduce the specification's worked examples and basic invariants."""

import math

import numpy as np
import pytest

from reference import advantages_np as ref


def close(a, b, tol=1e-4):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol, rtol=0)


# ---------------------------------------------------------------- GRPO family toys

def test_grpo_dr_grpo_rloo_toys():
  r = np.array([[1.0, 0, 0, 0]])
  close(ref.grpo(r, eps=0.0), [[1.5, -0.5, -0.5, -0.5]], 1e-12)
  close(ref.dr_grpo(r), [[0.75, -0.25, -0.25, -0.25]], 1e-12)
  close(ref.rloo(r), [[1, -1 / 3, -1 / 3, -1 / 3]], 1e-12)


def test_rloo_is_scaled_dr_grpo():
  r = np.random.default_rng(0).normal(size=(3, 5))
  close(ref.rloo(r), 5 / 4 * ref.dr_grpo(r), 1e-12)


def test_single_sample_groups_give_raw_reward():
  r = np.array([[0.7], [-2.0]])
  close(ref.grpo(r, eps=0.0), r, 1e-12)
  close(ref.rloo(r), r, 1e-12)
  close(ref.ngrpo(r, eps=0.0), r, 1e-12)


def test_ngrpo_toys():
  close(ref.ngrpo([[0.0, 0, 0, 0]]), [[-0.4472] * 4])
  close(ref.ngrpo([[1.0, 0, 0, 0]]), [[1.0954, -0.7303, -0.7303, -0.7303]])
  close(ref.ngrpo([[1.0, 1, 1, 1]]), [[0.0] * 4], 1e-12)


def test_s_grpo_decaying_reward():
  # exits in order: wrong, right, wrong, right -> r = [0, 1, 0, 0.5], mean 0.375
  close(ref.s_grpo([[False, True, False, True]]), [[-0.375, 0.625, -0.375, 0.125]], 1e-12)
  close(ref.s_grpo([[False, False, False]]), [[0, 0, 0]], 1e-12)


def test_seed_grpo_linear_factor():
  r = np.array([[1.0, 0, 0, 1]])
  ids = np.array([[0, 1, 1, 0]])  # two clusters of 2: SE = log 2, SE_max = log 4
  close(ref.seed_grpo(r, ids, alpha=1.0), ref.grpo(r) * 0.5, 1e-12)
  close(ref.seed_grpo(r, np.zeros((1, 4), int), alpha=1.0), ref.grpo(r), 1e-12)


# ---------------------------------------------------------------- invariants

SEQ_FUNCS = [ref.grpo, ref.dr_grpo, ref.rloo, ref.ngrpo]


@pytest.mark.parametrize("fn", SEQ_FUNCS)
def test_permutation_equivariance_and_constant_rewards(fn):
  rng = np.random.default_rng(1)
  r = rng.integers(0, 2, size=(3, 6)).astype(float)
  perm = rng.permutation(6)
  close(fn(r)[:, perm], fn(r[:, perm]), 1e-12)
  if fn is not ref.ngrpo:  # NGRPO's virtual max-reward sample makes constant sub-max rewards non-zero by design
    close(fn(np.full((2, 5), 0.3)), np.zeros((2, 5)), 1e-12)


def test_token_estimators_permutation_and_constant():
  rng = np.random.default_rng(2)
  P, G, T = 2, 5, 6
  tokens = rng.integers(0, 3, size=(P, G, T))
  lens = rng.integers(2, T + 1, size=(P, G))
  mask = (np.arange(T)[None, None, :] < lens[:, :, None]).astype(float)
  r = rng.integers(0, 2, size=(P, G)).astype(float)
  r[0, :2] = [0, 1]
  perm = rng.permutation(G)
  close(ref.tempo(tokens, mask, r)[:, perm], ref.tempo(tokens[:, perm], mask[:, perm], r[:, perm]), 1e-12)
  close(ref.reinforce_pp_baseline(r, mask)[:, perm], ref.reinforce_pp_baseline(r[:, perm], mask[:, perm]), 1e-12)
  paths = np.array([[[1, 3, -1], [1, 4, -1], [2, 5, 7], [2, 5, 8], [2, 6, -1]]] * P)
  close(ref.treepo(r, paths, mask)[:, perm], ref.treepo(r[:, perm], paths[:, perm], mask[:, perm]), 1e-12)
  const = np.full((P, G), 0.5)
  close(ref.tempo(tokens, mask, const), np.zeros((P, G, T)), 1e-12)
  close(ref.treepo_sequence(const, paths), np.zeros((P, G)), 1e-12)
  assert ref.tempo(tokens[:, :1], mask[:, :1], r[:, :1]).sum() == 0


# ---------------------------------------------------------------- REINFORCE++ / GAE

def test_reinforce_pp_returns_and_global_norm():
  r = np.array([[1.0, 0.0]])
  mask = np.array([[[1, 1, 1, 0], [1, 1, 0, 0]]], float)
  kl = np.full((1, 2, 4), 0.1)
  out = ref.reinforce_pp(r, mask, kl=kl, beta=0.5, gamma=1.0)
  ret = np.array([1 - 0.15, 1 - 0.1, 1 - 0.05, 0, -0.1, -0.05])  # valid tokens in order
  z = (ret[[0, 1, 2, 4, 5]] - ret[[0, 1, 2, 4, 5]].mean()) / ret[[0, 1, 2, 4, 5]].std()
  close(out[0, 0, :3], z[:3], 1e-9)
  close(out[0, 1, :2], z[3:], 1e-9)
  assert out[0, 0, 3] == 0 and out[0, 1, 2:].sum() == 0


def test_gae_lambda_one_is_return_minus_value():
  rng = np.random.default_rng(3)
  v = rng.normal(size=(1, 2, 4))
  mask = np.array([[[1, 1, 1, 1], [1, 1, 1, 0]]], float)
  r = np.array([[1.0, -1.0]])
  adv, ret = ref.gae(r, v, mask, gamma=1.0, lam=1.0, whiten_advantages=False)
  close(adv[0, 0], 1.0 - v[0, 0], 1e-12)
  close(adv[0, 1, :3], -1.0 - v[0, 1, :3], 1e-12)
  close(ret * mask, np.array([[[1.0] * 4, [-1.0] * 3 + [0]]]), 1e-12)
  # one-step TD when lam = 0
  adv0, _ = ref.gae(r, v, mask, gamma=0.9, lam=0.0, whiten_advantages=False)
  close(adv0[0, 0, 0], 0.9 * v[0, 0, 1] - v[0, 0, 0], 1e-12)


# ---------------------------------------------------------------- DCPO

def test_dcpo_first_visit_and_history():
  r1 = np.array([[1.0, 0.0, 0.0, 1.0]])
  a1, st = ref.dcpo(r1, ["q"], {})
  sd = np.std([1, 0, 0, 1], ddof=1)
  close(a1, (r1 - 0.5) / sd, 1e-12)
  assert st["q"][0] == 1
  # second visit, all rewards equal now: A_new = 0, so A = A_tot / 2 (smaller magnitude)
  r2 = np.ones((1, 4))
  a2, st2 = ref.dcpo(r2, ["q"], st)
  mu_tot = 0.75
  var_tot = (sd ** 2 + 0 + 0.5 * 0.25) / 2
  close(a2, np.full((1, 4), 0.5 * (1 - mu_tot) / math.sqrt(var_tot)), 1e-12)
  assert st2["q"][0] == 2 and st["q"][0] == 1


# ---------------------------------------------------------------- single-stream SPO

def test_single_stream_rho_examples():
  assert ref.single_stream_rho(0.0) == 0.96
  assert ref.single_stream_rho(0.0116) == 0.875
  assert ref.single_stream_rho(1.0) == 0.875
  close(ref.single_stream_rho(0.006), 2 ** -0.1, 1e-12)  # inside the band (0.0035, 0.0116)
  a, b = ref.single_stream_update(2.0, 3.0, 1.0, 0.9)
  close([a, b], [2.8, 2.7], 1e-12)
  close(ref.single_stream_init(0, 0), [0.5, 0.5], 0)
  close(ref.single_stream_init(3, 7), [8 * 3.5 / 8, 8 * 4.5 / 8], 1e-12)


def test_single_stream_advantages_and_weights():
  r, ph = np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.9])
  a = r - ph
  close(ref.single_stream_advantages(r, ph), (a - a.mean()) / (a.std(ddof=1) + 1e-8), 1e-12)
  w = ref.single_stream_weights([0.5, 0.0])
  close(w, [0.55 / 0.6, 0.05 / 0.6], 1e-12)


# ---------------------------------------------------------------- TEMPO toy tree

def tempo_toy():
  tokens = np.array([[[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 0]]])
  mask = np.array([[[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]]], float)
  return tokens, mask, np.array([[1.0, 0, 1, 0]])


def test_tempo_toy():
  out = ref.tempo(*tempo_toy())
  close(out[0, 0], [1.1547, 0.5773, 1.7320])
  close(out[0, 1], [-0.5773, -1.1547, -1.7320])
  close(out[0, 2], [1.1547, 1.4434, 0.8660])
  close(out[0, 3], [-1.7320, -0.8660, 0.0])


def test_tempo_mask_aware_equality():
  # sample 3 ends after one token; its pad id equals sample 0's token at j=1 but must not join the branch
  tokens = np.array([[[1, 2], [1, 3], [1, 2]]])
  mask = np.array([[[1, 1], [1, 1], [1, 0]]], float)
  r = np.array([[1.0, 0.0, 0.0]])
  out = ref.tempo(tokens, mask, r)
  sd = np.std([1, 0, 0], ddof=1) + 1e-6
  close(out[0, 0, 1], (1 - 1 / 3 + 1 - 1 / 3) / sd, 1e-9)  # branch {0}; unaware equality would give {0, 2}


# ---------------------------------------------------------------- TreePO toy

TREEPO_R = np.array([[1.0, 0.0, 1.0, 1.0]])
TREEPO_PATHS = np.array([[[10, 20, -1], [10, 21, -1], [11, 22, 30], [11, 22, 31]]])
TREEPO_MASK = (np.arange(6)[None, None, :] < np.array([[4, 4, 6, 6]])[:, :, None]).astype(float)


def test_treepo_toy_average():
  close(ref.treepo_sequence(TREEPO_R, TREEPO_PATHS), [[0.375, -0.625, 0.0833, 0.0833]])
  out = ref.treepo(TREEPO_R, TREEPO_PATHS, TREEPO_MASK)
  for i, v in enumerate([1.1000, -1.8333, 0.2444, 0.2444]):
    close(out[0, i][TREEPO_MASK[0, i] == 1], np.full(int(TREEPO_MASK[0, i].sum()), v))
  assert np.all(out[TREEPO_MASK == 0] == 0)


def test_treepo_toy_group_size():
  out = ref.treepo(TREEPO_R, TREEPO_PATHS, TREEPO_MASK, weighting="group_size")
  close(out[0, :, 0], [0.9129, -1.8959, 0.3277, 0.3277])


# ---------------------------------------------------------------- SPO chain / tree

def test_spo_chain_toy():
  p = np.array([[0.95, 0.5, 0.99, 0.3, 0.97, 0.6, 0.98, 0.99]])
  m = np.ones_like(p)
  assert ref.spo_chain_cutpoints(p[0], m[0], interval=1) == [0, 2, 4]
  vals = np.array([[0.5, 0.75, 0.25]])
  pre = ref.spo_chain(p, m, vals, np.array([1.0]), interval=1, prob_mask=False, whiten_advantages=False)
  close(pre, [[0, 0.25, 0.25, -0.5, -0.5, 0.75, 0.75, 0.75]], 1e-12)
  post = ref.spo_chain(p, m, vals, np.array([1.0]), interval=1, whiten_advantages=False)
  close(post, [[0, 0.25, 0, -0.5, 0, 0.75, 0, 0]], 1e-12)
  w = ref.spo_chain(p, m, vals, np.array([1.0]), interval=1)
  sel = p[0] < 0.9
  close(w[0], (post[0] - post[0][sel].mean()) / math.sqrt(post[0][sel].var(ddof=1) + 1e-8), 1e-12)


def test_spo_tree_edges():
  parent = [-1, 0, 0, 1, 1, 2, 2]
  v = ref.spo_tree_values(parent, [0, 0, 0, 1, 0, 1, 1])
  close(v, [0.75, 0.5, 1.0, 1, 0, 1, 1], 1e-12)
  close(ref.spo_tree(parent, v), [0, -0.25, 0.25, 0.5, -0.5, 0, 0], 1e-12)
  close(ref.spo_tree(parent, v, mode="grpo")[1:3], [-1.0, 1.0], 1e-6)
  assert list(ref.spo_tree_keep(parent, v, ref.spo_tree(parent, v))) == [False, True, True, True, True, False, False]


# ---------------------------------------------------------------- GiGPO toy

def test_gigpo_toy():
  # traj 0: 3 steps, reward 1 at t=2, anchor X(=0) at t=0; traj 1: 2 steps, reward 0, anchor X at t=1
  group = [0, 0, 0, 0, 0]
  traj = [0, 0, 0, 1, 1]
  step = [0, 1, 2, 0, 1]
  anchor = [0, 1, 2, 3, 0]
  sr = [0, 0, 1.0, 0, 0]
  er = [1.0, 1, 1, 0, 0]
  out = ref.gigpo(group, traj, step, anchor, sr, er)
  close(out, [0.5 + 0.45125, 0.5, 0.5, -0.5, -0.5 - 0.45125], 1e-12)
  out2 = ref.gigpo(group, traj, step, anchor, sr, er, mode="mean_std_norm")
  sd_e, sd_s = np.std([1, 0], ddof=1), np.std([0.9025, 0], ddof=1)
  close(out2[0], 0.5 / (sd_e + 1e-6) + 0.45125 / (sd_s + 1e-6), 1e-12)


# ---------------------------------------------------------------- BRPO toy

def test_brpo_toy():
  rbar = np.array([[[0.0, 1.0], [1.0, 1.0]]])
  out = ref.brpo(rbar, [0.5, 0.5])
  close(out[0, 0], [-0.25, 0.25], 1e-12)
  close(ref.brpo(rbar, [0.5, 0.5], baseline="none")[0, 0], [0.5, 0.5], 1e-12)
  sc = np.array([[[[1.0, 0.0]], [[1.0, 1.0]]]])
  close(ref.brpo_summary(sc), [[[[0.5, -0.5]], [[0, 0]]]], 1e-12)


# ---------------------------------------------------------------- PURE

def test_pure_min_form_credit():
  # 2 samples, 2 steps each; uniform weights, no baseline, no VR: A_t = sum of step rewards at separators >= t
  pr = np.array([[[0.5, -0.5], [0.2, 0.4]]])
  sm = np.ones((1, 2, 2))
  sp = np.array([[[1, 3], [1, 3]]])
  solved = np.array([[1.0, 0.0]])
  mask = np.ones((1, 2, 5))
  out = ref.pure(pr, sm, sp, solved, mask, weighted=False, baseline="none", vr_coef=0.0)
  close(out[0, 0], [0.25 - 0.25, 0, -0.25, 0, 0], 1e-12)
  # min-form weights: low temperature puts all weight on the min step
  out2 = ref.pure(pr, sm, sp, solved, mask, temperature=1e-3, baseline="none", vr_coef=0.0, mask_separator=False)
  close(out2[0, 0], [-0.5, -0.5, -0.5, -0.5, 0], 1e-9)
  # VR at EOS, RLOO-centred: v = [0, -1] -> [+1, -1]
  out3 = ref.pure(np.zeros((1, 2, 2)), sm, sp, solved, mask, baseline="none")
  close(out3[0, :, 4], [1.0, -1.0], 1e-12)


# ---------------------------------------------------------------- Rank-GRPO

def test_rank_grpo_log_decay_example():
  close(ref.rank_grpo_rewards([1, 0, 1, 0], kind="log_decay"), [1.5, 0.5, 0.5, 0.0], 1e-12)
  close(ref.rank_grpo_rewards([1, 0, 1, 0]), [1, 0, 1, 0], 0)
  r = np.array([[[1.0, 0.0], [0.0, 0.0]]])
  a = 0.5 / (math.sqrt(0.5) + 1e-4)  # column [1, 0]: deviations +-0.5, std_u sqrt(0.5); constant column -> 0
  close(ref.rank_grpo(r), [[[a, 0], [-a, 0]]], 1e-12)


# ---------------------------------------------------------------- token selection / DARS

def test_forking_tokens_top_rho_with_ties():
  h = np.array([[5.0, 1.0, 3.0, 3.0, 9.0], [2.0, 3.0, 0.0, 0.0, 0.0]])
  m = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], float)
  keep = ref.forking_tokens(h, m, rho=0.5)  # 6 valid, k = 3, tau = 3 -> ties: 5, 3, 3, 3
  assert keep.tolist() == [[True, False, True, True, False], [False, True, False, False, False]]
  assert not ref.forking_tokens(h, np.zeros_like(m)).any()


def test_lp_reg_select():
  lp = np.arange(300, dtype=float).reshape(3, 100) * -0.01
  adv = -np.ones_like(lp)
  proxy = np.zeros_like(lp)
  sel = ref.lp_reg_select(lp, proxy, adv, np.ones_like(lp))  # 300 negatives -> k = 3 lowest logp
  assert sel.sum() == 3 and sel[2, -3:].all()
  assert not ref.lp_reg_select(lp[:1], proxy[:1], adv[:1], np.ones((1, 100))).any()  # k = 1 -> nothing


def test_dars_toy_table():
  acc = [0.0, 0.125, 0.25, 0.375, 0.5]
  assert ref.dars(acc, schedule="ET").tolist() == [24, 11, 3, 1, 0]
  assert ref.dars(acc, schedule="HW").tolist() == [24, 24, 8, 3, 0]


def test_bad_inputs_raise():
  with pytest.raises(ValueError):
    ref.grpo(np.zeros(4))
  with pytest.raises(ValueError):
    ref.treepo_sequence(np.zeros((1, 2)), np.zeros((1, 2, 1), int), weighting="bogus")
  with pytest.raises(ValueError):
    ref.dcpo(np.zeros((2, 2)), ["a", "a"], {})


def test_reinforce_pp_baseline_styles_differ_by_bessel_factor():
  rng = np.random.default_rng(5)
  mask = (np.arange(5)[None, None, :] < rng.integers(1, 6, (2, 3))[..., None]).astype(float)
  r = rng.normal(size=(2, 3))
  s = mask.sum()
  verl = ref.reinforce_pp_baseline(r, mask)
  orlhf = ref.reinforce_pp_baseline(r, mask, style="openrlhf")
  close(orlhf, verl * math.sqrt(s / (s - 1)), 1e-6)
  c = (r - r.mean(1, keepdims=True))[:, :, None] * mask
  mu = c[mask == 1].mean()
  close(orlhf, (c - mu) / c[mask == 1].std() * mask, 1e-9)
