"""Methods from the seed papers that fit the objective / advantage API: each against an independent float64
reference (tests/reference/seed_methods_np.py; gradients by central differences with stop-gradient terms
frozen), with and without jit, plus hand-computed examples of the core formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import advantages, objectives
from objective_cases import make_batch
from reference import seed_methods_np as ref

f32 = lambda x: jnp.asarray(x, jnp.float32)
JIT = [False, True]


def value_and_grad(name, logp, old, adv, mask, jit, **kw):
  fn = objectives.get(name)
  vg = jax.value_and_grad(lambda lp: fn(lp, f32(old), f32(adv), f32(mask), **kw)[0])
  loss, grad = (jax.jit(vg) if jit else vg)(f32(logp))
  return float(loss), np.asarray(grad, np.float64)


def check(name, ref_loss, logp, old, adv, mask, jit, rtol=2e-4, atol=2e-5, **kw):
  got, got_grad = value_and_grad(name, logp, old, adv, mask, jit, **kw)
  want = ref_loss(logp)
  want_grad = ref.finite_difference(ref_loss, logp, mask)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
  np.testing.assert_allclose(got_grad, want_grad, rtol=2e-3, atol=atol)


# ----------------------------------------------------------------------------- OPMD / AsymRE

@pytest.mark.parametrize("jit", JIT)
def test_opmd_asymre_advantages_against_reference(jit):
  rewards = np.random.default_rng(0).integers(0, 2, (5, 4)).astype(np.float64)
  rewards[0, 0] = 0.3
  for kw in ({}, {"baseline": "logavgexp", "tau": 0.5}, {"baseline": "logavgexp", "tau": 2.0}):
    fn = (jax.jit(lambda r, kw=kw: advantages.opmd(r, **kw)) if jit else lambda r, kw=kw: advantages.opmd(r, **kw))
    np.testing.assert_allclose(np.asarray(fn(f32(rewards))), ref.opmd_advantages(rewards, **kw), atol=1e-6)
  for shift in (-0.1, 0.2):
    fn = (jax.jit(lambda r, s=shift: advantages.asymre(r, baseline_shift=s)) if jit
          else lambda r, s=shift: advantages.asymre(r, baseline_shift=s))
    np.testing.assert_allclose(np.asarray(fn(f32(rewards))), ref.asymre_advantages(rewards, shift), atol=1e-6)
  one = f32([[0.7], [1.0]])
  np.testing.assert_allclose(np.asarray(advantages.asymre(one)), [[0.7], [1.0]])   # one-sample group: baseline 0


def test_opmd_asymre_hand_examples():
  np.testing.assert_allclose(np.asarray(advantages.opmd(f32([[1.0, 0.0]]), baseline="logavgexp")),
                             [[1 - math.log((math.e + 1) / 2), -math.log((math.e + 1) / 2)]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(advantages.asymre(f32([[1.0, 0.0, 0.0, 0.0]]))), [[0.85, -0.15, -0.15, -0.15]],
                             atol=1e-6)
  # One token, A = 1, tau = 1: gradient -A/(1+tau) = -0.5 whatever the ratio to pi_old.
  _, g = value_and_grad("opmd", np.log([[0.3]]), np.log([[0.9]]), np.array([1.0]), np.ones((1, 1)), True)
  np.testing.assert_allclose(g, [[-0.5]], atol=1e-7)
  with pytest.raises(ValueError, match="baseline"):
    advantages.opmd(f32([[1.0, 0.0]]), baseline="median")


@pytest.mark.parametrize("jit,tau", [(False, 1.0), (True, 1.0), (True, 3.0)])
def test_opmd_objective_against_reference(jit, tau):
  logp, old, _, adv, mask, _ = make_batch(seed=11)
  check("opmd", lambda lp: ref.opmd(lp, adv, mask, tau=tau), logp, old, adv, mask, jit, tau=tau)


# ----------------------------------------------------------------------------- DisCO

# (jit, hyperparameters): the defaults both ways, the variants under jit.
DISCO_CASES = [(False, dict()), (True, dict()), (True, dict(score="Lratio")), (True, dict(tau=None)),
               (True, dict(tau=0.5, kl_type="k3", delta=1.0))]


@pytest.mark.parametrize("jit,hp", DISCO_CASES, ids=[f"{j}-{c}" for j, c in DISCO_CASES])
def test_disco_against_reference(jit, hp):
  logp, old, _, adv, mask, _ = make_batch(seed=21, b=8, lengths=(5, 3, 7, 0, 2, 6, 4, 1), spread=0.05)
  adv = np.sign(adv) * (np.arange(8) % 3 != 2)        # some zero advantages: neither positive nor negative
  loss = lambda lp: ref.disco(lp, old, adv, mask, group_size=4, frozen=logp.copy(), **hp)
  check("disco", loss, logp, old, adv, mask, jit, group_size=4, **hp)


def test_disco_hand_example():
  # One group of 3: a positive answer with log-probs -1 and negatives with -2 and -4 per token, tau = 1,
  # on-policy (KL = 0): loss = -(-1 - log((e^-2 + e^-4)/2)) = -1.56622.
  logp = np.array([[-1.0, -1.0], [-2.0, -2.0], [-4.0, -4.0]])
  adv = np.array([1.0, -0.5, -0.5])
  loss, grad = value_and_grad("disco", logp, logp, adv, np.ones((3, 2)), True, group_size=3, tau=1.0)
  want = -(-1.0 - math.log((math.exp(-2) + math.exp(-4)) / 2))
  assert loss == pytest.approx(want, abs=1e-5) and want == pytest.approx(-1.56622, abs=1e-5)
  soft = np.array([math.exp(-2), math.exp(-4)]) / (math.exp(-2) + math.exp(-4))  # softmax weights of negatives
  # d/dlogp: the positive row -1/2 per token, a negative row +soft/2 per token, and the KL penalty term
  # is inactive (KL = 0 < delta), but KL itself has gradient -1/6 per token times coef 0.
  np.testing.assert_allclose(grad, [[-0.5, -0.5], [soft[0] / 2] * 2, [soft[1] / 2] * 2], atol=1e-6)
  # A group with only correct answers takes no part.
  loss, grad = value_and_grad("disco", logp, logp, np.ones(3), np.ones((3, 2)), True, group_size=3)
  assert loss == 0.0 and np.all(grad == 0.0)
  with pytest.raises(ValueError, match="group_size"):
    value_and_grad("disco", logp, logp, adv, np.ones((3, 2)), True, group_size=2)


def test_disco_constraint_penalty_activates_above_delta():
  # Two tokens moved away from pi_old by -0.1: KL_k1 = 0.1 > delta, coef = 1e3 (0.1 - 1e-4) on the KL.
  logp, old = np.full((2, 2), -1.1), np.full((2, 2), -1.0)
  adv = np.array([1.0, -1.0])
  loss, grad = value_and_grad("disco", logp, old, adv, np.ones((2, 2)), True, group_size=2)
  coef = 1e3 * (0.1 - 1e-4)
  assert loss == pytest.approx(coef * 0.1 - (-1.1 - (-1.1)), rel=1e-5)
  np.testing.assert_allclose(grad, [[-0.5 - coef / 4] * 2, [0.5 - coef / 4] * 2], rtol=1e-5)


# ----------------------------------------------------------------------------- STEER

@pytest.mark.parametrize("jit,hp", [(False, dict()), (True, dict()), (True, dict(linear=False)),
                                    (True, dict(w_min=0.5, w_max=1.5, eps_high=0.2))])
def test_steer_against_reference(jit, hp):
  logp, old, _, adv, mask, extras = make_batch(seed=41, spread=0.1)
  h = extras["entropy"]
  loss = lambda lp: ref.steer(lp, old, adv, mask, entropy=h, frozen=logp.copy(), **hp)
  check("steer", loss, logp, old, adv, mask, jit, entropy=f32(h), **hp)


def test_steer_hand_example():
  # Token 1: p = 0.5, H = 1 → |Ω| = 0.25·(1 − ln 2)/0.5 = 0.15343 (the smallest → w = 1.2);
  # token 2: p = 0.25, H = 0.5 → |Ω| = 0.1875·|0.5 − ln 4|/0.25 = 0.66472 (the largest → w = 0.8).
  logp = np.log([[0.5, 0.25]])
  h = np.array([[1.0, 0.5]])
  w = np.asarray(objectives.steer_weights(f32(logp), f32(logp), f32([[1.0, 1.0]]), f32(h), f32(np.ones((1, 2))),
                                          w_min=0.8, w_max=1.2))
  np.testing.assert_allclose(w, [[1.2, 0.8]], atol=1e-6)
  loss, grad = value_and_grad("steer", logp, logp, np.array([1.0]), np.ones((1, 2)), True, entropy=f32(h))
  assert loss == pytest.approx(-1.0, abs=1e-6)           # token mean of −1.2 and −0.8 at r = 1
  np.testing.assert_allclose(grad, [[-0.6, -0.4]], atol=1e-6)


# ----------------------------------------------------------------------------- length / effort shaping

def test_group_shaping_against_reference():
  from rl_jax import rewards
  rng = np.random.default_rng(5)
  correct = rng.integers(0, 2, (6, 5)).astype(np.float64)
  correct[0] = 1.0
  lengths = rng.integers(5, 200, (6, 5)).astype(np.float64)
  lengths[1] = 40.0                                      # all equal: no length term
  formats = rng.integers(0, 3, (6, 5))
  effort = rng.uniform(0.2, 1.0, 6)
  cases = [
      (rewards.kimi_length_reward(f32(correct), f32(lengths)), ref.kimi_length_reward(correct, lengths)),
      (rewards.grpo_lambda_rewards(f32(correct), f32(lengths), threshold=0.6, length_weight=0.5),
       ref.grpo_lambda_rewards(correct, lengths, threshold=0.6, length_weight=0.5)),
      (jax.jit(lambda c, l: rewards.effort_rewards(c, l, f32(effort), coef=2.0))(f32(correct), f32(lengths)),
       ref.effort_rewards(correct, lengths, effort, coef=2.0)),
      (rewards.effort_rewards(f32(correct), f32(lengths), f32(effort), reference_lengths=f32(np.full(6, 80.0))),
       ref.effort_rewards(correct, lengths, effort, reference_lengths=np.full(6, 80.0))),
  ]
  for step in (0, 7, 20, 30):
    cases.append((rewards.ada_grpo_rewards(f32(correct), formats, step=step, total_steps=20),
                  ref.ada_grpo_rewards(correct, formats, step=step, total_steps=20)))
  for got, want in cases:
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_group_shaping_hand_examples():
  from rl_jax import rewards
  np.testing.assert_allclose(np.asarray(rewards.kimi_length_reward(f32([[1, 1, 0]]), f32([[10, 20, 30]]))),
                             [[0.5, 0.0, -0.5]])
  np.testing.assert_allclose(np.asarray(rewards.grpo_lambda_rewards(f32([[1, 1, 0, 1]]), f32([[10, 30, 20, 20]]))),
                             [[1.5, 0.5, 0.0, 1.0]])
  # 1 correct of 4 < threshold 0.5: plain 0/1 rewards.
  np.testing.assert_allclose(np.asarray(rewards.grpo_lambda_rewards(f32([[1, 0, 0, 0]]), f32([[10, 30, 20, 20]]))),
                             [[1, 0, 0, 0]])
  scaled = rewards.ada_grpo_rewards(f32(np.ones((1, 4))), np.array([[0, 0, 0, 1]]), step=0, total_steps=10)
  np.testing.assert_allclose(np.asarray(scaled), [[4 / 3, 4 / 3, 4 / 3, 4.0]], rtol=1e-6)
  done = rewards.ada_grpo_rewards(f32(np.ones((1, 4))), np.array([[0, 0, 0, 1]]), step=10, total_steps=10)
  np.testing.assert_allclose(np.asarray(done), np.ones((1, 4)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(rewards.effort_rewards(f32([[1, 1]]), f32([[50, 150]]), f32([0.5]))),
                             [[1.0, -1.0]])
  assert rewards.curriculum_budget(50, start=4096, end=1024, total_steps=100) == 2048
  assert rewards.curriculum_budget(50, start=4096, end=1024, total_steps=100, schedule="linear") == 2560
  assert rewards.curriculum_budget(500, start=4096, end=1024, total_steps=100) == 1024
  assert rewards.curriculum_reward(1, 150, 1, budget=100) == pytest.approx(0.85)
  assert rewards.curriculum_reward(1, 80, 0, budget=100) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="schedule"):
    rewards.curriculum_budget(1, start=10, end=5, total_steps=10, schedule="cosine")
  with pytest.raises(ValueError, match="threshold"):
    rewards.grpo_lambda_rewards(f32([[1, 0]]), f32([[3, 4]]), threshold=2.0)
  with pytest.raises(ValueError, match="effort"):
    rewards.effort_rewards(f32([[1, 0]]), f32([[3, 4]]), f32([0.0]))
  with pytest.raises(ValueError, match="formats"):
    rewards.ada_grpo_rewards(f32(np.ones((1, 4))), np.zeros((1, 3)), step=0, total_steps=10)


# ----------------------------------------------------------------------------- data: filtering, sampling, replay

def test_curation_rules():
  from rl_jax.data import curation
  np.testing.assert_array_equal(curation.variance_filter([[1, 1], [1, 0], [0, 0]]), [False, True, False])
  np.testing.assert_array_equal(curation.variance_filter([[1, 1, 0, 1], [1, 0, 0, 0]], min_std=0.0, max_mean=0.5),
                                [False, True])
  np.testing.assert_allclose(curation.variance_promotion_weights([0.5, 1, 0], mix=1.0), [1, 0, 0])
  np.testing.assert_allclose(curation.variance_promotion_weights([0.5, 0.1]), [0.5 * 0.25 / 0.34 + 0.25,
                                                                               0.5 * 0.09 / 0.34 + 0.25])
  # VPS = [0.25 + 0.5, 0 + 0.25] = [0.75, 0.25]; mix 0.5 with uniform 0.5 each → [0.625, 0.375].
  w = curation.variance_promotion_weights([0.5, 1.0], [0.5, 0.25], beta=1.0, mix=0.5)
  np.testing.assert_allclose(w, [0.625, 0.375])
  np.testing.assert_allclose(curation.variance_promotion_weights([1, 0], [0, 0]), [0.5, 0.5])
  slots = curation.replay_slots([[0, 0, 0], [1, 0, 0], [0, 0, 0], [0.1, 0.1, 0.1]], [True, True, False, True])
  np.testing.assert_array_equal(slots, [[True, False, False], [False] * 3, [False] * 3, [True, False, False]])
  buf = curation.replay_buffer_update({}, ["a", "a", "b"], ["x1", "x2", "y"], [1.0, 0.05, 0.0])
  assert buf == {"a": ["x1"]}
  buf2 = curation.replay_buffer_update(buf, ["a"] * 3, ["x2", "x3", "x4"], [1, 1, 1], size=2)
  assert buf2 == {"a": ["x3", "x4"]} and buf == {"a": ["x1"]}
  with pytest.raises(ValueError, match="has_success"):
    curation.replay_slots([[0, 0]], [True, False])


# ----------------------------------------------------------------------------- LLDS

@pytest.mark.parametrize("jit,coef,gate", [(False, 0.2, "action"), (True, 0.2, "action"), (True, 1.5, "response")])
def test_llds_against_reference(jit, coef, gate):
  logp, old, _, adv, mask, _ = make_batch(seed=51, spread=0.15)
  mask[0, 3] = mask[4, 2] = 0.0                          # holes: responses of several actions
  loss = lambda lp: ref.llds(lp, old, adv, mask, frozen=logp.copy(), llds_coef=coef, gate=gate)
  check("llds", loss, logp, old, adv, mask, jit, llds_coef=coef, gate=gate)
  # Token-level advantages: the kept tokens of one response can form several runs.
  logp, old, _, adv, mask, _ = make_batch(seed=52, spread=0.15, seq_adv=False)
  loss = lambda lp: ref.llds(lp, old, adv, mask, frozen=logp.copy(), llds_coef=coef, gate=gate)
  check("llds", loss, logp, old, adv, mask, jit, llds_coef=coef, gate=gate)


def test_llds_hand_example():
  # One correct response whose log-likelihood fell by 0.3 − 0.1 = 0.2 > 0: the penalty acts on token 1 only.
  old = np.array([[-1.0, -1.0]])
  logp = old - np.array([[0.3, -0.1]])
  loss, grad = value_and_grad("llds", logp, old, np.array([1.0]), np.ones((1, 2)), True)
  r1, r2 = math.exp(-0.3), math.exp(0.1)
  assert loss == pytest.approx((-r1 - r2) / 2 + 0.2 * 0.3 / 2, abs=1e-6)
  np.testing.assert_allclose(grad, [[-r1 / 2 - 0.1, -r2 / 2]], atol=1e-6)
  # Two actions (a masked observation between them): the first lost likelihood, the second gained. The
  # action gate penalises the first only; the response gate sees a net rise (−0.3 + 0.5) and penalises nothing.
  old4 = np.full((1, 5), -1.0)
  lp4 = old4 - np.array([[0.3, 0.0, 0.0, -0.5, 0.0]])
  m4 = np.array([[1.0, 1.0, 0.0, 1.0, 1.0]])
  _, met_a = objectives.llds(f32(lp4), f32(old4), f32([1.0]), f32(m4))
  _, met_r = objectives.llds(f32(lp4), f32(old4), f32([1.0]), f32(m4), gate="response")
  assert float(met_a["llds_penalty"]) == pytest.approx(0.3 / 4) and float(met_r["llds_penalty"]) == 0.0
  # Negative advantage, or a likelihood that rose overall: no penalty.
  for a, lp in ((-1.0, logp), (1.0, old + np.array([[-0.1, 0.3]]))):
    _, metrics = objectives.llds(f32(lp), f32(old), f32([a]), f32(np.ones((1, 2))))
    assert float(metrics["llds_penalty"]) == 0.0


# ----------------------------------------------------------------------------- token selection: TW-GRPO, PPPO

@pytest.mark.parametrize("jit", JIT)
def test_tw_grpo_weights_against_reference(jit):
  rng = np.random.default_rng(61)
  logits = rng.normal(size=(6, 5, 4)) * 2
  vocab_logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  mask = (np.arange(5)[None, :] < np.array([5, 3, 4, 4, 0, 2])[:, None]).astype(np.float64)
  fn = lambda lp, m: advantages.tw_grpo(lp, m, group_size=3, max_weight=1.5)
  got = (jax.jit(fn) if jit else fn)(f32(vocab_logp), f32(mask))
  np.testing.assert_allclose(np.asarray(got), ref.tw_grpo_weights(vocab_logp, mask, group_size=3, max_weight=1.5),
                             rtol=1e-5, atol=1e-6)


def test_tw_grpo_and_prefix_retention_hand_examples():
  # Position 0: both rows agree (divergence 0 → weight 1); position 1: they differ (the maximum → α = 1.7).
  p = np.log(np.array([[[0.5, 0.5], [0.9, 0.1]], [[0.5, 0.5], [0.1, 0.9]]]))
  w = advantages.tw_grpo(f32(p), f32(np.ones((2, 2))), group_size=2)
  np.testing.assert_allclose(np.asarray(w), [[1.0, 1.7], [1.0, 1.7]], atol=1e-6)
  mask = (np.arange(12)[None, :] < np.array([10, 0, 4])[:, None]).astype(np.float32)
  keep = np.asarray(advantages.prefix_retention(mask, step=5, total_steps=100, start_frac=0.2, end_frac=1.0))
  # f = 0.2 + 0.8·5/100 = 0.24: ⌈2.4⌉ = 3 of 10 tokens, 0 of 0, ⌈0.96⌉ = 1 of 4.
  np.testing.assert_array_equal(keep.sum(-1), [3, 0, 1])
  np.testing.assert_array_equal(keep[0, :4], [1, 1, 1, 0])
  np.testing.assert_array_equal(np.asarray(advantages.prefix_retention(mask, step=100, total_steps=100)), mask)


# ----------------------------------------------------------------------------- label-free consistency rewards

def test_consistency_rewards():
  from rl_jax import rewards
  assert rewards.majority_vote_rewards(["4", "5", "4", None]) == [1, 0, 1, 0]
  assert rewards.majority_vote_rewards(["5", "4", "4", "5"]) == [1, 0, 0, 1]      # tie: first seen wins
  assert rewards.majority_vote_rewards([None, None]) == [0, 0]
  assert rewards.token_f1("the cat sat", "the cat") == pytest.approx(0.8)
  got = rewards.paraphrase_consistency_rewards([["a b", "a"], ["a b"]])
  np.testing.assert_allclose(got[0], [1.0, 2 / 3])
  np.testing.assert_allclose(got[1], [(1.0 + 2 / 3) / 2])
  exact = lambda a, b: float(a == b)
  got = rewards.paraphrase_consistency_rewards([["x", "y"], ["x"], ["x", "x"]], exact)
  np.testing.assert_allclose([got[0], got[2]], [[1.0, 0.0], [2 / 3, 2 / 3]])
  np.testing.assert_allclose(got[1], [0.75])
  with pytest.raises(ValueError, match="2 paraphrases"):
    rewards.paraphrase_consistency_rewards([["x"]])


def test_bad_hyperparameters_raise_before_compute():
  lp, m, a = f32(-np.ones((2, 3))), f32(np.ones((2, 3))), f32([1.0, -1.0])
  h = f32(np.ones((2, 3)))
  for name, kw, match in [("disco", dict(group_size=2, score="logp"), "score"),
                          ("disco", dict(group_size=2, kl_type="k2"), "kl_type"),
                          ("disco", dict(group_size=2, tau=0.0), "tau"),
                          ("steer", dict(entropy=h, w_min=1.2, w_max=0.8), "w_min"),
                          ("steer", dict(entropy=None), "entropy"),
                          ("llds", dict(llds_coef=-1.0), "llds_coef"),
                          ("opmd", dict(tau=-0.5), "tau")]:
    with pytest.raises(ValueError, match=match):
      objectives.get(name)(lp, lp, a, m, **kw)


# ----------------------------------------------------------------------------- early-exit / budget rollout inputs

def test_truncated_thinking_prompts():
  from rl_jax import early_exit
  ids, mask = early_exit.truncated_prompts([0, 0, 5, 6], [0, 0, 1, 1], [11, 12, 13, 14], [1, 4], [99], pad_id=0)
  np.testing.assert_array_equal(ids, [[0, 0, 0, 5, 6, 11, 99], [5, 6, 11, 12, 13, 14, 99]])
  np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 1, 1], [1] * 7])
  cuts = early_exit.sample_exit_positions(np.random.default_rng(0), 10, 4)
  assert len(cuts) == 4 and cuts[-1] == 10 and cuts == sorted(set(cuts)) and 1 <= cuts[0]
  assert early_exit.sample_exit_positions(np.random.default_rng(0), 2, 5) == [1, 2]
  assert early_exit.budget_positions(300, [100, 200, 400]) == [100, 200, 300]
  with pytest.raises(ValueError, match="budgets"):
    early_exit.budget_positions(300, [200, 100])
  with pytest.raises(ValueError, match="cuts"):
    early_exit.truncated_prompts([5], [1], [11, 12], [3], [99])


# ----------------------------------------------------------------------------- AEPO (ARES) entropy shaping

def test_aepo_window_triggers_and_entropy_reward():
  from rl_jax.rewards import entropy_budget as eb
  h = [0.1, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 0.2]
  trig = [True, True, False, False, True, False, False, False]
  # t = 0: window [1, 1, 1, 1] → mean 1 ≥ 0.5 (valid, cost 0.5); t = 1: [1, 1, 1, 0.2] → 0.8 (valid, cost 0.3);
  # t = 4: [0.2, 0.2, 0.2] is not a full window → skipped.
  valid, invalid, cost = eb.window_entropy_triggers(h, trig, threshold=0.5)
  assert (valid, invalid) == (2, 0) and cost == pytest.approx(0.8)
  assert eb.window_entropy_triggers(h, trig, threshold=0.9)[:2] == (1, 1)
  assert [eb.difficulty_bucket(a) for a in (1.0, 2 / 3, 0.5, 1 / 3, 0.2)] == ["easy", "easy", "medium", "medium", "hard"]
  r = eb.hierarchical_entropy_reward
  # easy (band m = max(1, 0.15·10) = 1.5, κ = 2, cap 0.5): at the target no penalty; 3 over → Huber(1.5) = 0.5625.
  assert r(True, "easy", 10, 10) == 0.0
  assert r(True, "easy", 13, 10) == pytest.approx(-0.5625 / 3.5 * 0.5)
  assert r(True, "easy", 20, 10) == pytest.approx(-0.5)               # capped
  assert r(True, "easy", 2, 10) == 0.0                                # fewer triggers than the target: fine when easy
  # medium penalises both sides (m = 2.5, κ = 3): 4 under → Huber(1.5) = 0.375.
  assert r(True, "medium", 6, 10) == pytest.approx(-0.375 / 5.5 * 0.5)
  # hard (m = 3.5, T = 3, cap 0.6): correct at the target earns σ(3.5/3)·0.6; wrong earns σ(0)·0.6 = 0.3.
  assert r(True, "hard", 10, 10) == pytest.approx(0.6 / (1 + math.exp(-3.5 / 3)))
  assert r(False, "hard", 10, 10) == pytest.approx(0.3)
  assert r(False, "easy", 10, 10) == pytest.approx(0.5 * 0.5 * 0.6)
  # hard and correct far below the target: half-weight Huber penalty, 10 under → Huber(6.5) = 4.5.
  assert r(True, "hard", 0, 10) == pytest.approx(-min(0.6, 0.5 * 4.5 / 7.5 * 0.6))
  with pytest.raises(ValueError, match="difficulty"):
    r(True, "trivial", 1, 1)


# ----------------------------------------------------------------------------- Zoom-Zero token-selective credit

@pytest.mark.parametrize("jit", JIT)
def test_zoom_zero_against_reference(jit):
  rng = np.random.default_rng(71)
  P, G, T = 3, 4, 6
  shared, r_in, r_out = (rng.uniform(0, 1, (P, G)) for _ in range(3))
  a = rng.integers(0, 4, (P, G))
  b = a + rng.integers(0, 3, (P, G))
  mask = (np.arange(T)[None, None, :] < rng.integers(0, T + 1, (P, G))[..., None]).astype(np.float64)
  fn = lambda *x: advantages.zoom_zero(*x)
  got = (jax.jit(fn) if jit else fn)(f32(shared), f32(r_in), f32(r_out), a, b, f32(mask))
  np.testing.assert_allclose(np.asarray(got), ref.zoom_zero(shared, r_in, r_out, a, b, mask), rtol=1e-5, atol=1e-5)


def test_zoom_zero_hand_example():
  # Two responses of 2 tokens; the answer span is token 1. Response 0: answer right (1), IoU 0; response 1:
  # answer wrong, IoU 1; no shared reward. Scores /3: [[0, 1/3], [1/3, 0]] → mean 1/6, std (ddof 1) = 0.19245.
  got = advantages.zoom_zero(f32([[0, 0]]), f32([[1, 0]]), f32([[0, 1]]), [[1, 1]], [[2, 2]], f32(np.ones((1, 2, 2))))
  z = (1 / 6) / math.sqrt((4 * (1 / 6) ** 2) / 3)
  np.testing.assert_allclose(np.asarray(got), [[[-z, z], [z, -z]]], atol=1e-5)


# ----------------------------------------------------------------------------- SPINE entropy band

@pytest.mark.parametrize("jit,hp", [(False, dict()), (True, dict()), (True, dict(rho=0.5, h_low=0.8, h_high=1.6,
                                                                                 band_coef=0.3, eps_high=0.28))])
def test_spine_against_reference(jit, hp):
  logp, old, _, adv, mask, extras = make_batch(seed=81, spread=0.1)
  h = extras["entropy"]
  loss = lambda lp: ref.spine(lp, old, adv, mask, entropy=h, frozen=logp.copy(), **hp)
  check("spine", loss, logp, old, adv, mask, jit, entropy=f32(h), **hp)
  logp2, old2, _, adv2, mask2, _ = make_batch(seed=82, spread=0.1, seq_adv=False)
  loss2 = lambda lp: ref.spine(lp, old2, adv2, mask2, entropy=h, frozen=logp2.copy(), **hp)
  check("spine", loss2, logp2, old2, adv2, mask2, jit, entropy=f32(h), **hp)


def test_spine_hand_example():
  # rho = 0.5 of 4 tokens → the 2 highest entropies fork: H = 3 (above the band: side +1) and H = 1 (inside).
  # On-policy, A = 1, log π = log 0.5: the band term at token 1 is c·(−(log 0.5 + 3)·log 0.5).
  lp = np.full((1, 4), math.log(0.5))
  h = f32([[0.1, 3.0, 1.0, 0.5]])
  loss, grad = value_and_grad("spine", lp, lp, np.array([1.0]), np.ones((1, 4)), True, entropy=h, rho=0.5)
  s = -(math.log(0.5) + 3.0) * math.log(0.5)
  assert loss == pytest.approx((-2.0 + 0.01 * s) / 4, abs=1e-6)
  np.testing.assert_allclose(grad, [[0.0, (-1.0 - 0.01 * (math.log(0.5) + 3.0)) / 4, -0.25, 0.0]], atol=1e-6)
  # Below the band the term raises entropy: its gradient has the opposite sign.
  band, side = objectives.entropy_band_surrogate(f32(lp[:, :2]), f32([[0.1, 3.0]]), h_low=0.3, h_high=2.0)
  np.testing.assert_array_equal(np.asarray(side), [[-1.0, 1.0]])
  _, metrics = objectives.spine(f32(lp), f32(lp), f32([1.0]), f32(np.ones((1, 4))), entropy=h, rho=0.5)
  assert float(metrics["fork_frac"]) == 0.5 and float(metrics["band_high_frac"]) == 0.5
  for kw, match in ((dict(h_low=2.0, h_high=1.0), "h_low"), (dict(band_coef=-1.0), "band_coef"),
                    (dict(rho=0.0), "rho")):
    with pytest.raises(ValueError, match=match):
      objectives.spine(f32(lp), f32(lp), f32([1.0]), f32(np.ones((1, 4))), entropy=h, **kw)


# ----------------------------------------------------------------------------- HAPO adaptive sampling temperature

def test_hapo_temperature_factor_and_stats_against_reference():
  from rl_jax.sampling import entropy_temperature_factor
  rng = np.random.default_rng(91)
  logits = rng.normal(size=(7, 11)) * rng.uniform(0.1, 4.0, (7, 1))
  stats = np.array([0.2, 0.8, 0.7, 1.3])
  for tau in (0.05, 0.5):
    got = jax.jit(lambda z, s: entropy_temperature_factor(z, s, tau))(f32(logits), f32(stats))
    np.testing.assert_allclose(np.asarray(got), ref.entropy_temperature_factor(logits, stats, tau), rtol=1e-5)
  _, _, _, _, mask, extras = make_batch(seed=92)
  got = objectives.entropy_temperature_stats(f32(extras["entropy"]), f32(mask))
  np.testing.assert_allclose(np.asarray(got), ref.entropy_temperature_stats(extras["entropy"], mask), rtol=1e-5)
  # the batch's own statistics map its entropies onto ĥ ∈ [−1, 1], reaching both ends
  h = np.log(extras["entropy"][mask > 0])
  s = np.asarray(got)
  hh = (h - s[0]) / s[1]
  hh = np.where(hh > 0, hh * s[2], hh * s[3])
  assert hh.max() == pytest.approx(1.0, abs=1e-5) and hh.min() == pytest.approx(-1.0, abs=1e-5)


def test_hapo_adaptive_temperature_in_the_sampler():
  from rl_jax.models import init_params, tiny_config
  from rl_jax.sampling import generate
  cfg = tiny_config(13, d_model=16, n_layers=1, head_dim=4, ffn_dim=32, max_seq_len=16)
  params = init_params(cfg, jax.random.PRNGKey(0))
  prompts, mask, key = jnp.ones((3, 4), jnp.int32), jnp.ones((3, 4), jnp.int32), jax.random.PRNGKey(5)
  run = lambda **kw: generate(params, cfg, prompts, mask, key, max_new_tokens=6, **kw)
  plain = run(temperature=0.8)
  # stats that put every step above the centre with ĥ clipped to 1: T' = 0.8·(1 + 0.5) = 1.2 everywhere
  hot = run(temperature=0.8, temperature_stats=f32([-50.0, 1.0, 1e3, 1e3]), temperature_tau=0.5)
  ref_hot = run(temperature=1.2)
  np.testing.assert_array_equal(np.asarray(hot.tokens), np.asarray(ref_hot.tokens))
  np.testing.assert_allclose(np.asarray(hot.logp), np.asarray(ref_hot.logp), rtol=1e-5, atol=1e-6)
  # ... and below it with ĥ = −1: T' = 0.8·0.5 = 0.4; τ = 0 or no stats: the fixed temperature
  cold = run(temperature=0.8, temperature_stats=f32([50.0, 1.0, 1e3, 1e3]), temperature_tau=0.5)
  np.testing.assert_allclose(np.asarray(cold.logp), np.asarray(run(temperature=0.4).logp), rtol=1e-5, atol=1e-6)
  same = run(temperature=0.8, temperature_stats=f32([-50.0, 1.0, 1e3, 1e3]), temperature_tau=0.0)
  np.testing.assert_array_equal(np.asarray(same.logp), np.asarray(plain.logp))
  assert not np.allclose(np.asarray(hot.logp), np.asarray(plain.logp))
  with pytest.raises(ValueError, match="temperature_tau"):
    run(temperature=0.8, temperature_stats=f32([0, 1, 1, 1]), temperature_tau=1.0)


# ----------------------------------------------------------------------------- GCPO group contrastive masking

def test_gcpo_rewards_against_reference_and_hand_example():
  from rl_jax import rewards
  rng = np.random.default_rng(101)
  correct = rng.integers(0, 2, (8, 5)).astype(np.float64)
  aux = rng.integers(0, 2, (8, 5)).astype(np.float64)
  aux[0], aux[1] = 1.0, 0.0                               # one side empty: masked (Δ = 0)
  lengths = rng.integers(1, 300, (8, 5)).astype(np.float64)
  for kw in ({}, dict(margin=0.3, aux_weight=0.5, length_weight=0.2, max_len=200.0)):
    got = jax.jit(lambda c, a, n, kw=kw: rewards.gcpo_rewards(c, a, n, **kw))(f32(correct), f32(aux), f32(lengths))
    np.testing.assert_allclose(np.asarray(got), ref.gcpo_rewards(correct, aux, lengths, **kw), rtol=1e-6, atol=1e-6)
  hand = rewards.gcpo_rewards(f32([[1, 1, 0, 0], [1, 1, 0, 0]]), f32([[1, 1, 0, 1], [0, 0, 1, 1]]), f32(np.ones((2, 4))))
  np.testing.assert_allclose(np.asarray(hand), [[2, 2, 0, 1], [1, 1, -1, -1]])
  with pytest.raises(ValueError, match="margin"):
    rewards.gcpo_rewards(f32([[1, 0]]), f32([[1, 0]]), f32([[1, 1]]), margin=-0.1)
  with pytest.raises(ValueError, match="uses_aux"):
    rewards.gcpo_rewards(f32([[1, 0]]), f32([[1, 0, 1]]), f32([[1, 1]]))


@pytest.mark.parametrize("jit", JIT)
def test_hapo_token_level_group_average_against_reference(jit):
  rng = np.random.default_rng(111)
  rewards = rng.integers(0, 2, (6, 4)).astype(np.float64)
  rewards[0] = [1, 1, 1, 0]                                # long correct rows: a padded 0 lands far from μ
  mask = (np.arange(30)[None, None, :] < rng.integers(1, 31, (6, 4))[..., None]).astype(np.float64)
  mask[0] = np.arange(30)[None, :] < np.array([[30], [30], [30], [2]])
  for kw in ({}, {"check_padding": False}, {"fallback": 1.0}):
    fn = lambda r, m, kw=kw: advantages.hapo_tlga(r, m, **kw)
    got = (jax.jit(fn) if jit else fn)(f32(rewards), f32(mask))
    np.testing.assert_allclose(np.asarray(got), ref.hapo_tlga(rewards, mask, **kw), rtol=1e-5, atol=1e-5)


def test_hapo_token_level_group_average_hand_example():
  # R = [1, 0] with lengths 1 and 3: μ = 1/4, σ = √3/4 → [√3, −1/√3 ×3]; no |A| ≥ 5, so no fallback.
  mask = f32([[[1, 0, 0], [1, 1, 1]]])
  got = np.asarray(advantages.hapo_tlga(f32([[1.0, 0.0]]), mask))
  s3 = math.sqrt(3)
  np.testing.assert_allclose(got, [[[s3, 0, 0], [-1 / s3] * 3]], rtol=1e-5)
  # 9 correct tokens and 1 wrong: the wrong token sits at −3 σ, a padded slot at −μ/σ = −3; fallback 2.5 → GRPO
  mask = f32([[[1] * 9 + [0], [1] + [0] * 9]])
  grpo_adv = np.asarray(advantages.grpo(f32([[1.0, 0.0]])))[0]
  got = np.asarray(advantages.hapo_tlga(f32([[1.0, 0.0]]), mask, fallback=2.5))
  np.testing.assert_allclose(got[0, 0, :9], grpo_adv[0], rtol=1e-5)
  with pytest.raises(ValueError, match="fallback"):
    advantages.hapo_tlga(f32([[1.0, 0.0]]), mask, fallback=0.0)


# ----------------------------------------------------------------------------- OTR (one-token rollout SFT loss)

@pytest.mark.parametrize("jit,kw", [(False, {}), (True, {}), (True, dict(neg_reward=-0.5, baseline=False))])
def test_otr_surrogate_against_reference(jit, kw):
  from rl_jax import sft_losses
  rng = np.random.default_rng(121)
  logits = rng.normal(size=(3, 4, 5)) * 2
  targets = rng.integers(0, 5, (3, 4))
  cands = rng.integers(0, 5, (3, 4, 6))
  cands[0, 0, :3] = targets[0, 0]
  mask = (np.arange(4)[None, :] < np.array([4, 2, 0])[:, None]).astype(np.float64)
  fn = lambda z: sft_losses.otr_surrogate(z, jnp.asarray(cands), jnp.asarray(targets), f32(mask), **kw)[0]
  vg = jax.value_and_grad(fn)
  loss, grad = (jax.jit(vg) if jit else vg)(f32(logits))
  want = lambda z: ref.otr_surrogate(z, cands, targets, mask, **kw)
  assert float(loss) == pytest.approx(want(logits), rel=1e-5, abs=1e-6)
  h, num = 1e-6, np.zeros_like(logits)
  for idx in np.ndindex(logits.shape):
    up, down = logits.copy(), logits.copy()
    up[idx] += h
    down[idx] -= h
    num[idx] = (want(up) - want(down)) / (2 * h)
  np.testing.assert_allclose(np.asarray(grad), num, rtol=2e-3, atol=1e-5)


def test_otr_expected_gradient_raises_the_data_tokens_probability():
  # Without a baseline E[∇ℓ] = −∇π(y): dπ(y)/dz_j = π(y)(1[j = y] − π_j). Checked with 40000 sampled candidates.
  from rl_jax import sft_losses
  logits = f32([[[1.0, 0.0, -1.0, 0.5]]])
  y, mask = jnp.array([[2]]), f32([[1.0]])
  g = jax.grad(lambda z: sft_losses.otr_loss(z, y, mask, jax.random.PRNGKey(0), num_samples=40000,
                                            baseline=False)[0])(logits)
  p = np.exp(np.asarray(logits[0, 0]) - np.log(np.exp(np.asarray(logits[0, 0])).sum()))
  want = -p[2] * (np.eye(4)[2] - p)
  np.testing.assert_allclose(np.asarray(g)[0, 0], want, atol=3e-3)
  _, metrics = sft_losses.otr_loss(logits, y, mask, jax.random.PRNGKey(1), num_samples=40000)
  assert float(metrics["otr_hit_rate"]) == pytest.approx(p[2], abs=0.01)
  for kw, match in ((dict(num_samples=0), "num_samples"), (dict(temperature=0.0), "temperature"),
                    (dict(neg_reward=2.0), "neg_reward")):
    with pytest.raises(ValueError, match=match):
      sft_losses.otr_loss(logits, y, mask, jax.random.PRNGKey(0), **kw)


def test_otr_warm_up_of_the_arithmetic_experiment_lowers_cross_entropy():
  import optax
  from rl_jax.experiments import arithmetic_tiny as exp
  from rl_jax.models import init_params
  from rl_jax.train import SFTBatch, init_state, make_sft_step
  cfg = exp.Config(sft_loss="otr", sft_steps=30, sft_batch=32, d_model=32, progress_bar=False)
  task, model_cfg = exp.build(cfg)
  problems = task.problems(64, stream=9, index=0)
  batch = SFTBatch(*(jnp.asarray(x) for x in (*task.encode_prompts([p for p, _ in problems]),
                                               *task.encode_answers([a for _, a in problems]))))
  ce = make_sft_step(model_cfg, optax.sgd(0.0))                       # lr 0: measures the loss only
  before = init_params(model_cfg, jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1))
  loss = lambda params: float(ce(init_state(params, optax.sgd(0.0), jax.random.PRNGKey(0)), batch)[1]["sft_loss"])
  after = exp.warm_up(cfg, task, model_cfg).params
  assert loss(after) < 0.8 * loss(before)
  with pytest.raises(ValueError, match="sft_loss"):
    exp.Config(sft_loss="dft")
