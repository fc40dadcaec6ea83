"""The float64 objective references reproduce the specification's worked examples, their hand-written gradients
match central finite differences (stop-gradient terms frozen), and masked garbage never leaks into results."""

import math

import numpy as np
import pytest

from reference import objectives_np as ref
from reference.objectives_parts_np import nearest_quantile


def close(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol, rtol=0)


def one_token(fn, r, A, **kw):
  """Loss and grad of a single valid token with ratio r and advantage A."""
  lp = np.array([[math.log(r)]])
  return fn(lp, np.zeros((1, 1)), np.array([A]), np.ones((1, 1)), **kw)


# ----------------------------------------------------------------------------- worked examples

def test_grpo_example_eps02_c3():
  kw = dict(eps_low=0.2, eps_high=0.2, dual_clip_c=3.0, beta=0.0)
  for r, A, want, want_grad in [(1.5, 1.0, -1.2, 0.0), (1.5, -1.0, 1.5, 1.5), (5.0, -1.0, 3.0, 0.0),
                                (0.5, -1.0, 0.8, 0.0), (1.1, 1.0, -1.1, -1.1)]:
    loss, grad, _ = one_token(ref.grpo, r, A, **kw)
    close(loss, want, 1e-12)
    close(grad[0, 0], want_grad, 1e-12)
  _, _, met = one_token(ref.grpo, 5.0, -1.0, **kw)
  assert met["clip_frac"] == 1.0 and met["ratio_max"] == pytest.approx(5.0)


def test_k3_example_and_grpo_kl_term():
  v, g = ref.kl_k3(np.log([[0.5]]), np.log([[0.4]]))
  close(v, 0.02314, 1e-5)
  close(g, 1 - 0.8, 1e-12)
  loss, grad, met = ref.grpo(np.log([[0.5]]), np.log([[0.5]]), np.array([0.0]), np.ones((1, 1)),
                             ref_logp=np.log([[0.4]]), beta=1.0)
  close(loss, 0.8 - math.log(0.8) - 1, 1e-12)
  close(met["kl"], loss, 1e-12)
  close(grad, 0.2, 1e-12)


def test_kl_estimators_values_and_clamps():
  lp, rf = np.array([[0.3, -30.0]]), np.array([[-0.2, 0.0]])
  close(ref.kl_k1(lp, rf)[0], [[0.5, -30.0]], 1e-12)
  close(ref.kl_k2(lp, rf)[0], [[0.125, 450.0]], 1e-12)
  v, g = ref.kl_k3(lp, rf)
  close(v[0, 0], math.exp(-0.5) + 0.5 - 1, 1e-12)
  assert v[0, 1] == 10.0 and g[0, 1] == 0.0   # x = 30 clamped to 20, value clamped to 10


def test_dr_grpo_example():
  lp = np.zeros((2, 3))
  A = np.array([2.0, -1.0])   # token-loss sums -6 and +3 at r = 1
  loss, grad, _ = ref.dr_grpo(lp, lp, A, np.ones((2, 3)))
  close(loss, -5e-4, 1e-15)
  close(grad, -A[:, None] * np.ones((1, 3)) / (2 * 3000), 1e-15)


def test_gspo_example():
  d = np.array([[0.1, -0.05, 0.0, 0.15]])
  for fn in (ref.gspo, ref.gspo_token):
    loss, grad, met = fn(d, np.zeros((1, 4)), np.array([1.0]), np.ones((1, 4)))
    close(loss, -1.0004, 1e-12)
    close(grad, 0.0, 0)
    close(met["ratio_mean"], math.exp(0.05), 1e-12)
    assert met["clip_frac"] == 1.0


def test_sapo_examples():
  for r, A, want_f, want_wr in [(1.0, 1.0, 2.0, 1.0), (1.2, 1.0, 2.19934, 1.18808), (1.5, -1.0, 2.39359, 1.40121)]:
    loss, grad, _ = one_token(ref.sapo, r, A)
    close(loss, -A * want_f, 1e-5)
    close(grad[0, 0], -A * want_wr, 1e-5)


def test_dcpo_bounds_examples():
  lo, hi = ref.dcpo_bounds(np.log([0.9, 0.01]), eps_low=0.16, eps_high=0.2)
  close(lo, [0.7687, 0.5], 1e-4)
  close(hi, [1.1872, 5.0], 1e-4)
  lo, hi = ref.dcpo_bounds(np.array([-1e4]), eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
  close(lo, [0.5], 0)
  close(hi, [10.0], 0)
  # Through the loss: q = 0.9, r above hi with A = 1 is clipped at hi.
  old = np.log([[0.9]])
  loss, grad, _ = ref.dcpo(old + math.log(1.5), old, np.array([1.0]), np.ones((1, 1)), eps_low=0.16, eps_high=0.2)
  close(loss, -1.1872, 1e-4)
  close(grad, 0.0, 0)


def test_minpro_prefix_min_example():
  r = np.array([[1.2, 0.5, 1.1, 0.9]])
  m = np.ones((1, 4))
  close(ref.minpro_weights(r, m), [[1, 1.2, 0.5, 0.5]], 1e-12)
  close(ref.minpro_weights(r, m, include_current=True), [[1.2, 0.5, 0.5, 0.5]], 1e-12)
  close(ref.minpro_weights(r, m, cap_at_one=True), [[1, 1, 0.5, 0.5]], 1e-12)
  loss, _, _ = ref.minpro(np.log(r), np.zeros((1, 4)), np.array([1.0]), m, eps_low=0.9, eps_high=0.9)
  close(loss, -(1 * 1.2 + 1.2 * 0.5 + 0.5 * 1.1 + 0.5 * 0.9) / 4, 1e-12)


def test_hapo_examples_paper_semantics():
  el, eh, _ = ref.hapo_adapt(np.array([-1.0, 1.0]), np.ones(2), np.ones(2))
  close(el, [0.4, 0.2], 1e-12)
  close(eh, [0.2, 0.4], 1e-12)
  el, eh, A = ref.hapo_adapt(np.array([0.5, 0.5, -0.5, -0.5]), np.ones(4), np.array([1.3, 1.1, 1.3, 1.05]))
  close(eh[0], 0.3, 1e-12)
  close(A, [1.5, 1.0, 1.0, 0.5], 1e-12)   # h>0: A_ent outside N; h<=0: A_ent inside N


def test_hapo_h_hat_both_sign_conventions():
  H = np.exp(np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]]))
  m = np.ones((1, 5))
  close(ref.hapo_h_hat(H, m, reproduce_code_sign=False), [[-1, -2 / 3, -1 / 3, 0, 1]], 1e-12)
  close(ref.hapo_h_hat(H, m, reproduce_code_sign=True), [[1, 2 / 3, 1 / 3, 0, 1]], 1e-12)
  vals = np.random.default_rng(3).normal(size=11)
  for q in (0.0, 0.1, 0.25, 0.5, 0.8, 0.95, 1.0):
    assert nearest_quantile(vals, q) == np.quantile(vals, q, method="nearest")


def test_gmpo_examples():
  d = np.array([[0.5, -0.6, 0.1]])
  for A, want in [(1.0, -0.96722), (-1.0, 1.06894)]:
    loss, _, _ = ref.gmpo(d, np.zeros((1, 3)), np.array([A]), np.ones((1, 3)))
    close(loss, want, 1e-5)
  with pytest.raises(ValueError):
    ref.gmpo(d, np.zeros((1, 3)), np.ones((1, 3)), np.ones((1, 3)))


def test_cispo_weights_example():
  r = np.array([0.5, 1.1, 1.5])
  w, keep, clipped = ref.cispo_weights(r, np.ones(3))
  close(w, [0.5, 1.1, 1.2], 1e-12)
  assert keep.tolist() == [1, 1, 1] and clipped.tolist() == [False, False, True]
  w, keep, _ = ref.cispo_weights(r, np.array([1.0, -1.0, 1.0]), eps_low=0.2, trust_mask=True)
  assert keep.tolist() == [1, 1, 0]
  close(ref.cispo_weights(r, np.ones(3), eps_high=1.2, cap_mode="absolute")[0], [0.5, 1.1, 1.2], 1e-12)
  loss, grad, _ = ref.cispo(np.log([[1.5]]), np.zeros((1, 1)), np.array([2.0]), np.ones((1, 1)))
  close(loss, -1.2 * 2 * math.log(1.5), 1e-12)
  close(grad, -2.4, 1e-12)


def test_tis_mis_icepop_table():
  k = np.array([[0.3, 1.5, 2.5, 6.0]])
  m = np.ones((1, 4))
  old, roll = np.log(k), np.zeros((1, 4))
  close(ref.mismatch_weights("tis", old, roll, m), [[0.3, 1.5, 2, 2]], 1e-12)
  close(ref.mismatch_weights("mis", old, roll, m), [[0, 1.5, 0, 0]], 1e-12)
  close(ref.mismatch_weights("mis", old, roll, m, mis_high=5.0), [[0, 1.5, 2.5, 0]], 1e-12)
  seq = ref.mismatch_weights("tis", np.log([[1.2, 1.5, 0.5, 9.0]]), roll, np.array([[1, 1, 1, 0]]),
                             level="sequence")
  close(seq, [[0.9, 0.9, 0.9, 0]], 1e-12)
  # Through the loss: at r = 1 the GRPO token loss is -A, multiplied by the weight; the KL term is not weighted.
  w = np.array([[0.3, 1.5, 2, 2]])
  rf = old + 0.2
  loss, grad, met = ref.tis(old, old, np.array([1.0]), m, rollout_logp=roll, ref_logp=rf, beta=0.5,
                            agg="token-mean")
  kl, dkl = ref.kl_k3(old, rf)
  close(loss, -w.mean() + 0.5 * kl.mean(), 1e-12)
  close(grad, -w / 4 + 0.5 * dkl / 4, 1e-12)
  close(met["is_weight_mean"], w.mean(), 1e-12)


def test_gtpo_conflict_example():
  tok = np.array([[1, 2, 3, 4], [1, 2, 9, 4]])   # pos = [a b c d], neg = [a b x d]
  delta, n_conf = ref.gtpo_conflict_weights(tok, np.ones((2, 4)), np.array([1.0, -1.0]), 2)
  close(delta, [[2, 2, 1, 2], [0, 0, 1, 0]], 0)
  close(n_conf, [3, 3], 0)
  # Both regions overlap on a fully shared completion: weight 2 * 2 = 4.
  delta, n_conf = ref.gtpo_conflict_weights(np.array([[5, 6], [5, 6]]), np.ones((2, 2)), np.array([1.0, -1.0]), 2)
  close(delta, [[4, 4], [0, 0]], 0)
  close(n_conf, [2, 2], 0)
  # No negative completion in the group: no conflicts.
  delta, n_conf = ref.gtpo_conflict_weights(tok, np.ones((2, 4)), np.array([1.0, 0.0]), 2)
  close(delta, 1.0, 0)
  close(n_conf, 1.0, 0)
  # Right-aligned suffix with different lengths.
  tok = np.array([[7, 1, 2, 0], [3, 7, 1, 2]])
  m = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
  delta, n_conf = ref.gtpo_conflict_weights(tok, m, np.array([-1.0, 1.0]), 2)
  close(delta, [[0, 0, 0, 0], [1, 2, 2, 2]], 0)   # forward: 7 != 3 (empty); backward: 2, 1, 7 shared
  close(n_conf, [3, 3], 0)
  # A forward run must start at position 0: shared tokens after a difference do not count.
  delta, n_conf = ref.gtpo_conflict_weights(np.array([[1, 5, 6, 2], [3, 5, 6, 4]]), np.ones((2, 4)),
                                            np.array([1.0, -1.0]), 2)
  close(delta, 1.0, 0)
  close(n_conf, [1, 1], 0)


def test_gtpo_loss_value():
  tok = np.array([[1, 2, 3, 4], [1, 2, 9, 4]])
  H = np.full((2, 4), 0.2)
  lp = np.log(np.full((2, 4), 0.5))
  loss, grad, _ = ref.gtpo(lp, lp - 0.3, np.array([1.0, -1.0]), np.ones((2, 4)), token_ids=tok, entropy=H,
                           group_size=2)
  a_pos, a_neg = 1 - 0.02, -1 - 0.02
  want = -(a_pos * (2 + 2 + 1 + 2) / 3 / 4) - (a_neg * (0 + 0 + 1 + 0) / 3 / 4)
  close(loss, want, 1e-12)
  close(grad[0], -a_pos * np.array([2, 2, 1, 2]) / 12, 1e-12)
  H[0] = 0.9   # entropy filter: the positive completion gets A' = 0
  loss, _, _ = ref.gtpo(lp, lp, np.array([1.0, -1.0]), np.ones((2, 4)), token_ids=tok, entropy=H, group_size=2)
  close(loss, -(a_neg * 1 / 3 / 4), 1e-12)


def test_segment_ratios_and_sentence_ids():
  ids = ref.sentence_segment_ids(np.array([[5, 0, 6, 7, 0, 8]]), np.ones((1, 6)), [0])
  assert ids.tolist() == [[0, 0, 1, 1, 1, 2]]
  ids = ref.sentence_segment_ids(np.array([[5, 0, 6, 0, 7]]), np.array([[1, 0, 1, 1, 1]]), [0, 9])
  assert ids.tolist() == [[0, 0, 0, 0, 1]]   # a masked delimiter does not count
  d = np.array([[0.1, 0.3, -0.2]])
  rank = np.array([[0, 0, 1]])
  _, _, met = ref.rank_grpo(d, np.zeros((1, 3)), np.array([1.0]), np.ones((1, 3)), rank_ids=rank, beta=0.0)
  close(met["ratio_mean"], (2 * math.exp(0.2) + math.exp(-0.2)) / 3, 1e-12)
  close(met["ratio_max"], math.exp(0.2), 1e-12)


def test_sspo_phi():
  seg = np.array([[0, 0, 1, 1], [0, 1, 1, 2]])
  H = np.array([[1.0, 1.0, 3.0, 3.0], [0.0, 2.0, 2.0, 9.0]])
  m = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
  phi = ref.sspo_phi(seg, m, H)   # segment means 1, 3, 0, 2 -> batch mean 1.5
  close(phi, [[2 / 3, 2 / 3, 2, 2], [0.5, 4 / 3, 4 / 3, 1]], 1e-12)


def test_aggregation_modes():
  rng = np.random.default_rng(1)
  ell = rng.normal(size=(4, 5))
  m = (rng.uniform(size=(4, 5)) > 0.4).astype(float)
  m[2] = 0
  for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
    W = ref.agg_weights(m, agg, max_len=7)
    close((W * ell).sum(), ref.aggregate(ell, m, agg, max_len=7), 1e-12)
  with pytest.raises(ValueError):
    ref.agg_weights(m, "seq-mean-token-sum-norm")
  with pytest.raises(ValueError):
    ref.agg_weights(m, "mean")


# ----------------------------------------------------------------------------- random battery

B, T, G = 4, 6, 2


def make_inputs(seed, token_adv=False):
  rng = np.random.default_rng(seed)
  lp = np.log(rng.uniform(0.05, 0.95, (B, T)))
  inp = dict(
      logp=lp,
      old_logp=lp + rng.normal(0, 0.35, (B, T)),
      advantages=rng.normal(size=(B, T) if token_adv else B),
      mask=np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], float),
      ref_logp=lp + rng.normal(0, 0.3, (B, T)),
  )
  extras = dict(
      entropy=rng.uniform(0.05, 1.0, (B, T)),
      rollout_logp=inp["old_logp"] + rng.normal(0, 0.4, (B, T)),
      segment_ids=np.sort(rng.integers(0, 3, (B, T)), axis=1),
      rank_ids=np.sort(rng.integers(0, 3, (B, T)), axis=1),
      token_ids=rng.integers(0, 2, (B, T)),
  )
  return inp, extras


# (method, hparams, extra inputs it takes, token-level advantages allowed)
CASES = [
    ("grpo", dict(beta=0.04), (), True),
    ("grpo", dict(beta=0.1, kl_estimator="k1", agg="token-mean", eps_low=0.1, eps_high=0.3, dual_clip_c=1.5), (),
     True),
    ("grpo", dict(beta=0.1, kl_estimator="k2", agg="seq-mean-token-sum"), (), True),
    ("ppo_dual_clip", dict(dual_clip_c=1.2), (), True),
    ("dr_grpo", dict(max_len=8, beta=0.2), (), True),
    ("dapo", dict(), (), True),
    ("ngrpo", dict(), (), True),
    ("gspo", dict(eps_low=0.05, eps_high=0.08), (), True),
    ("gspo", dict(eps_low=0.5, eps_high=0.5, beta=0.1, agg="token-mean"), (), True),
    ("gspo_token", dict(eps_low=0.05, eps_high=0.08), (), True),
    ("sapo", dict(beta=0.05), (), True),
    ("dhpo", dict(eps_low=0.2, eps_high=0.2, seq_eps_low=0.05, seq_eps_high=0.05), (), True),
    ("dhpo", dict(mix_space="geometric", seq_eps_low=0.05, seq_eps_high=0.05), (), True),
    ("dhpo", dict(mixing="entropy", seq_eps_low=0.05, seq_eps_high=0.05), ("entropy",), True),
    ("dhpo", dict(mixing="entropy", mix_space="geometric", seq_eps_low=0.08, seq_eps_high=0.04), ("entropy",),
     True),
    ("sspo", dict(eps_low=0.1, eps_high=0.1), ("segment_ids",), True),
    ("sspo", dict(eps_low=0.1, eps_high=0.1, entropy_alpha=0.7), ("segment_ids", "entropy"), True),
    ("rank_grpo", dict(eps_low=0.1, eps_high=0.15), ("rank_ids",), True),
    ("dcpo", dict(eps_low=0.05, eps_high=0.1, dual_clip_c=2.0), (), True),
    ("minpro", dict(), (), True),
    ("minpro", dict(include_current=True, cap_at_one=True), (), True),
    ("hapo", dict(eps_low=0.1, eps_high=0.1, dual_clip_c=2.0), ("entropy",), True),
    ("hapo", dict(reproduce_code_sign=False, eps_low=0.15, eps_high=0.2), ("entropy",), True),
    ("cispo", dict(), (), True),
    ("cispo", dict(eps_low=0.2, trust_mask=True, beta=0.1), (), True),
    ("cispo", dict(eps_high=1.1, cap_mode="absolute"), (), True),
    ("gmpo", dict(clip_c=0.2), (), False),
    ("gmpo", dict(clip_c=0.4, beta=0.1), (), False),
    ("clip_cov", dict(clip_cov_ratio=1.0, clip_cov_lb=0.02, clip_cov_ub=5.0, eps_low=0.2, eps_high=0.2), (), True),
    ("kl_cov", dict(kl_cov_frac=0.3, kl_cov_coef=0.5), (), True),
    ("gtpo", dict(group_size=G, ent_threshold=0.65, ent_scale=0.3), ("token_ids", "entropy"), False),
    ("gtpo", dict(group_size=G, beta=0.1), ("token_ids", "entropy"), False),
    ("tis", dict(beta=0.0), ("rollout_logp",), True),
    ("tis", dict(base="gspo", level="sequence", eps_low=0.1, eps_high=0.1), ("rollout_logp",), True),
    ("mis", dict(base="dapo", mis_low=0.7, mis_high=1.3), ("rollout_logp",), True),
    ("mis", dict(base="sapo", level="sequence", mis_low=0.1, mis_high=10.0), ("rollout_logp",), True),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def call(case, inp, extras, **over):
  name, hp, needs, _ = case
  kw = dict(hp)
  kw.update({k: extras[k] for k in needs})
  kw.update(over)
  return getattr(ref, name)(inp["logp"], inp["old_logp"], inp["advantages"], inp["mask"],
                            ref_logp=inp["ref_logp"], **kw)


def fd_grad(case, inp, extras, h=1e-6):
  lp0 = inp["logp"]
  out = np.zeros_like(lp0)
  for i in range(B):
    for t in range(T):
      vals = []
      for s in (h, -h):
        lp = lp0.copy()
        lp[i, t] += s
        vals.append(call(case, dict(inp, logp=lp), extras, _sg_logp=lp0)[0])
      out[i, t] = (vals[0] - vals[1]) / (2 * h)
  return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_matches_finite_differences(case):
  for seed, token_adv in [(0, False), (1, case[3])]:
    inp, extras = make_inputs(seed, token_adv)
    loss, grad, met = call(case, inp, extras)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert {"clip_frac", "ratio_mean", "ratio_max"} <= set(met)
    assert ("kl" in met) == (case[1].get("beta", getattr(ref, case[0]).__kwdefaults__.get("beta", 0)) > 0)
    assert np.abs(grad).max() > 1e-4   # the case exercises a live gradient
    close(grad, fd_grad(case, inp, extras), 1e-6)
    assert np.all(grad[inp["mask"] == 0] == 0)
    if case[0] == "clip_cov":
      assert met["cov_selected"] > 0


def garbage(inp, extras, fill):
  bad = inp["mask"] == 0
  inp = {k: (np.where(bad, fill, v) if k in ("logp", "old_logp", "ref_logp") or
             (k == "advantages" and v.ndim == 2) else v) for k, v in inp.items()}
  extras = {k: (np.where(bad, fill if v.dtype.kind == "f" else 12345, v)) for k, v in extras.items()}
  return inp, extras


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_masked_garbage_is_ignored(case):
  inp, extras = make_inputs(2, case[3])
  want = call(case, *garbage(inp, extras, 0.0))
  for fill in (np.nan, 7.0, -np.inf):
    got = call(case, *garbage(inp, extras, fill))
    close(got[0], want[0], 1e-12)
    close(got[1], want[1], 1e-12)
    for k in want[2]:
      close(got[2][k], want[2][k], 1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_all_masked_gives_zero(case):
  inp, extras = make_inputs(3, case[3])
  inp, extras = garbage(dict(inp, mask=np.zeros((B, T))), extras, np.nan)
  if inp["advantages"].ndim == 1:   # a [B] advantage of an empty row is garbage too
    inp["advantages"] = np.full(B, np.nan)
  loss, grad, met = call(case, inp, extras)
  assert loss == 0.0 and np.all(grad == 0.0)
  assert all(np.isfinite(v) for v in met.values())


def test_equivalences():
  inp, extras = make_inputs(4, True)
  base = ref.grpo(**inp, eps_low=0.1, eps_high=0.15, beta=0.0, agg="token-mean")
  own = np.arange(T)[None, :] * np.ones((B, 1), int)
  for got in (ref.rank_grpo(**inp, rank_ids=own, eps_low=0.1, eps_high=0.15, beta=0.0),
              ref.sspo(**inp, segment_ids=own, eps_low=0.1, eps_high=0.15, agg="token-mean"),
              ref.minpro(**inp, eps_low=0.1, eps_high=0.15, cap_at_one=True, _sg_logp=inp["old_logp"]),
              ref.tis(**inp, rollout_logp=inp["old_logp"], tis_cap=5.0, eps_low=0.1, eps_high=0.15, beta=0.0,
                      agg="token-mean")):
    close(got[0], base[0], 1e-12)
    close(got[1], base[1], 1e-12)
  a = ref.gspo(**inp, eps_low=0.05, eps_high=0.08)
  b = ref.gspo_token(**inp, eps_low=0.05, eps_high=0.08)
  close(a[0], b[0], 1e-12)
  seq_inp = dict(inp, advantages=inp["advantages"][:, 0])
  a = ref.gspo(**seq_inp, eps_low=0.05, eps_high=0.08)
  b = ref.gspo_token(**seq_inp, eps_low=0.05, eps_high=0.08)
  close(a[1], b[1], 1e-12)   # with sequence advantages the gradients agree too


def test_bad_inputs_raise():
  inp, extras = make_inputs(5, True)
  with pytest.raises(NotImplementedError):
    ref.clip_cov(**inp, clip_cov_ratio=1e-4, clip_cov_lb=-100.0, clip_cov_ub=100.0)
  with pytest.raises(ValueError):
    ref.grpo(**dict(inp, ref_logp=None))   # beta = 0.04 needs ref_logp
  with pytest.raises(ValueError):
    ref.grpo(**inp, kl_estimator="k4")
  with pytest.raises(ValueError):
    ref.tis(**inp, rollout_logp=extras["rollout_logp"], base="gmpo")
  with pytest.raises(ValueError):
    ref.gtpo(**dict(inp, advantages=inp["advantages"][:, 0]), token_ids=extras["token_ids"],
             entropy=extras["entropy"], group_size=3)
  with pytest.raises(ValueError):
    ref.grpo(**dict(inp, advantages=np.ones(3)))
