"""Every experiment module runs 2 RL steps on a tiny config; the GSM8K run also resumes exactly."""

import importlib
import json
import pathlib

import jax
import numpy as np
import optax
import pytest

from rl_jax import registry
from rl_jax.metrics_log import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _need_smollm2():
  from rl_jax.models import smollm2_gguf_path
  try:
    smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(f"{e} (the GSM8K experiment uses its tokenizer)")

GSM8K_TINY = dict(model="tiny-random", rl_steps=2, prompts_per_step=2, group_size=2, max_new_tokens=8, eval_size=3,
                  eval_max_new_tokens=8, eval_batch=3, checkpoint_every=1, progress_bar=False)
TINY = {  # experiment module -> overrides that make it a seconds-long run
    "arithmetic_tiny": dict(digits=1, d_model=32, sft_steps=2, sft_batch=8, rl_steps=2, prompts_per_step=2,
                            group_size=2, minibatches=1, eval_every=1, eval_size=8, checkpoint_every=0,
                            progress_bar=False),
    "gsm8k_smollm2": GSM8K_TINY,
}


def test_every_experiment_has_a_tiny_config():
  modules = sorted(p.stem for p in (ROOT / "rl_jax" / "experiments").glob("*.py") if p.stem != "__init__")
  assert modules == sorted(TINY), f"add a tiny config for {set(modules) ^ set(TINY)}"


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_runs_two_steps(name, tmp_path):
  if name == "gsm8k_smollm2":
    _need_smollm2()
  mod = importlib.import_module(f"rl_jax.experiments.{name}")
  cfg = mod.Config(run_dir=str(tmp_path), **TINY[name])
  mod.main(cfg)
  rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["phase"] == "rl"]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["reward"]) for r in rows)
  assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.fixture
def gsm8k():
  _need_smollm2()
  from rl_jax.experiments import gsm8k_smollm2
  return gsm8k_smollm2


def test_gsm8k_resume_equals_uninterrupted(gsm8k, tmp_path):
  full = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "full"), **GSM8K_TINY))
  cut = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "cut"), **dict(GSM8K_TINY, rl_steps=1)))   # "killed" after 1 step
  first_rows = [r for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["phase"] == "rl"]
  resumed = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "cut"), **GSM8K_TINY))
  a = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["phase"] == "rl"]
  b = [r for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["phase"] == "rl"]
  # train_seconds counts every RL step once, across invocations: step 1 timed by the first, step 2 by the second
  assert cut["train_seconds"] == first_rows[0]["step_seconds"] > 0
  assert b[0] == first_rows[0]
  assert resumed["train_seconds"] == pytest.approx(b[0]["step_seconds"] + b[1]["step_seconds"], rel=1e-12)
  assert full["train_seconds"] == pytest.approx(a[0]["step_seconds"] + a[1]["step_seconds"], rel=1e-12)
  drop = ("gen_seconds", "step_seconds", "tokens_per_s", "time")
  assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
         [{k: v for k, v in r.items() if k not in drop} for r in b]
  assert full["after"]["gsm8k"]["greedy"] == resumed["after"]["gsm8k"]["greedy"]
  assert json.loads((tmp_path / "cut" / "summary.json").read_text())["before"]["gsm8k"]["n"] == 3
  assert not (tmp_path / "full" / "eval_cache").exists()   # a finished evaluation removes its resume cache


def test_gsm8k_before_from_reuses_an_equal_evaluation_and_refuses_a_different_one(gsm8k, tmp_path):
  tiny = dict(GSM8K_TINY, rl_steps=0, checkpoint_every=0)
  first = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "a"), **tiny))
  reused = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "b"), before_from=str(tmp_path / "a"),
                                   **dict(tiny, objective="dapo")))   # objective does not enter the "before" evaluation
  assert reused["before"] == first["before"]
  assert reused["before_from"] == str(tmp_path / "a") and "before_from" not in first   # named, for the time notes
  with pytest.raises(ValueError, match="eval_size"):
    gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "c"), before_from=str(tmp_path / "a"), **dict(tiny, eval_size=2)))
  with pytest.raises(FileNotFoundError, match="summary.json"):
    gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "d"), before_from=str(tmp_path / "nowhere"), **tiny))


def test_gsm8k_finished_run_returns_its_summary_and_a_changed_evaluation_reruns(gsm8k, tmp_path, monkeypatch):
  tiny = dict(GSM8K_TINY, rl_steps=1)
  done = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **tiny))

  def no_evaluation(*a, **k):
    raise AssertionError("a finished run was evaluated again")

  monkeypatch.setattr(gsm8k, "evaluate_all", no_evaluation)
  # what the backward recomputes changes memory and time only: the finished run stands
  recompute = dict(remat=False, remat_policy="dots" if gsm8k.Config().remat_policy == "full" else "full")
  again = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, progress_bar=True, **recompute)))
  assert again == done
  with pytest.raises(AssertionError, match="evaluated again"):   # other eval settings: the stored result does not stand
    gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, eval_size=2)))


def test_gsm8k_resume_with_other_evaluation_settings_evaluates_both_ends_again_without_training(gsm8k, tmp_path,
                                                                                                monkeypatch):
  tiny = dict(GSM8K_TINY, rl_steps=1)
  gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **tiny))
  rl_rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["phase"] == "rl"]
  fresh = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "fresh"), **dict(tiny, eval_size=2)))
  from rl_jax import loop
  monkeypatch.setattr(loop, "rl_iteration", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
  again = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, eval_size=2)))
  assert again["before"]["gsm8k"]["n"] == again["after"]["gsm8k"]["n"] == 2      # both ends with the new settings
  assert again["before"]["gsm8k"]["greedy"] == fresh["before"]["gsm8k"]["greedy"]
  assert again["after"]["gsm8k"]["greedy"] == fresh["after"]["gsm8k"]["greedy"]  # the step-1 checkpoint, not retrained
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert [r for r in rows if r["phase"] == "rl"] == rl_rows
  assert sorted(r["step"] for r in rows if r["phase"] == "eval") == [0, 1]        # one row per evaluation, no stale one


def test_gsm8k_run_killed_while_evaluating_with_new_settings_cannot_return_the_old_scores(gsm8k, tmp_path,
                                                                                          monkeypatch):
  tiny = dict(GSM8K_TINY, rl_steps=1)
  gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **tiny))
  real = gsm8k.evaluate_all

  def killed(*a, **k):
    raise KeyboardInterrupt

  monkeypatch.setattr(gsm8k, "evaluate_all", killed)
  with pytest.raises(KeyboardInterrupt):
    gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, eval_size=2)))
  stale = json.loads((tmp_path / "summary.json").read_text())
  assert "before" not in stale and "after" not in stale     # the n=3 scores are gone with their settings
  monkeypatch.setattr(gsm8k, "evaluate_all", real)
  again = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, eval_size=2)))
  assert again["before"]["gsm8k"]["n"] == again["after"]["gsm8k"]["n"] == 2


def _varied_rewards(gsm8k, monkeypatch):
  import zlib

  def checksum_reward(self, texts, answers, lengths, truncated):   # a random model is never right: vary the rewards
    r = np.array([zlib.crc32(t.encode()) % 3 / 2 for t in texts], np.float32)
    return r, r

  monkeypatch.setattr(gsm8k.Rewarder, "__call__", checksum_reward)


def test_gsm8k_after_reuses_before_only_when_no_weight_moved(gsm8k, tmp_path, monkeypatch):
  """All-wrong groups give zero advantages, a zero gradient and a zero Adam update: the weights after RL are the
  initial ones bit for bit, and so is the evaluation (same weights, settings and key). A run that moved a weight
  is evaluated again, by the sampler compiled for "before" (the trained parameters are placed as the initial ones
  were, so the jitted sampler's cache gains no entry)."""
  from rl_jax import continuous_sampling, sampling
  from rl_jax.evaluation import params_digest

  real, calls, compiled = gsm8k.evaluate_all, [], []
  samplers = lambda: sampling._generate_jit._cache_size() + continuous_sampling._generate_continuous_jit._cache_size()

  def counting(cfg, params, mcfg, tok, tag):
    calls.append((tag, params_digest(params)))
    size = samplers()
    out = real(cfg, params, mcfg, tok, tag)
    compiled.append(samplers() - size)
    return out

  monkeypatch.setattr(gsm8k, "evaluate_all", counting)
  tiny = dict(GSM8K_TINY, rl_steps=2)
  still = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "still"), **tiny))    # the tiny model is never right
  rows = [r for r in read_metrics(tmp_path / "still" / "metrics.jsonl") if r["phase"] == "rl"]
  assert all(r["grad_norm"] == 0 for r in rows)
  assert [t for t, _ in calls] == ["before"] and still["after"] == still["before"] and still["after_is_before"]

  calls.clear(), compiled.clear()
  _varied_rewards(gsm8k, monkeypatch)
  moved = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "moved"), **dict(tiny, lr=1e-2)))
  rows = [r for r in read_metrics(tmp_path / "moved" / "metrics.jsonl") if r["phase"] == "rl"]
  assert any(r["grad_norm"] > 0 for r in rows)
  assert [t for t, _ in calls] == ["before", "after"] and calls[0][1] != calls[1][1]
  assert "after_is_before" not in moved
  assert compiled[1] == 0, compiled                        # "after" reuses the sampler "before" compiled


def test_gsm8k_resume_refuses_a_run_trained_with_other_settings(gsm8k, tmp_path):
  tiny = dict(GSM8K_TINY, rl_steps=1)
  gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **tiny))
  stored = (tmp_path / "config.json").read_text()
  for change, match in ((dict(lr=1e-3), "lr"), (dict(objective="dapo"), "objective"), (dict(seed=1), "seed")):
    with pytest.raises(ValueError, match=f"other settings.*'{match}'"):
      gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, **change)))
    assert (tmp_path / "config.json").read_text() == stored          # the refused run left the record alone
  with pytest.raises(ValueError, match="past rl_steps=0"):
    gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, rl_steps=0)))
  restarted = gsm8k.main(gsm8k.Config(run_dir=str(tmp_path), **dict(tiny, lr=1e-3, resume=False)))
  assert restarted["after"]["gsm8k"]["n"] == 3


def test_gsm8k_config(gsm8k):
  pod = gsm8k.make_config(["--preset=pod", "--lr=2e-6"])
  assert pod.prompts_per_step == 128 and pod.eval_size == 0 and pod.lr == 2e-6 and pod.objective == "dapo"
  assert gsm8k.make_config([]).prompts_per_step == gsm8k.Config().prompts_per_step
  for bad in (["--objective=nope"], ["--eval_sets=gsm8k,nope"], ["--overlong_buffer=1000"], ["--minibatches=3"]):
    with pytest.raises(ValueError):
      gsm8k.make_config(bad)


def test_gsm8k_dynamic_sampling_and_overlong_shaping_run(gsm8k, tmp_path):
  cfg = gsm8k.Config(run_dir=str(tmp_path), **dict(GSM8K_TINY, objective="dapo", dynamic_sampling=True,
                                                   max_gen_batches=2, overlong_buffer=4, format_bonus=0.1,
                                                   checkpoint_every=0, eval_sets=""))
  gsm8k.main(cfg)
  rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["phase"] == "rl"]
  assert [r["gen_batches"] for r in rows] == [2, 2]        # a random model's groups are all 0 → refills tried
  # every sample is 8 tokens long, in the 4-token overlong buffer of an 8-token cap: penalty −1 each
  assert all(r["reward"] == pytest.approx(-1.0) for r in rows)


def test_gsm8k_rewarder(gsm8k):
  r = gsm8k.Rewarder(gsm8k.Config(max_new_tokens=100, overlong_buffer=20, format_bonus=0.5))
  reward, correct = r(["so #### 12", "I think 12", "#### 13", "x"], ["12"] * 4, [10, 90, 100, 5], [False] * 4)
  np.testing.assert_allclose(correct, [1, 1, 0, 0])
  # overlong: length 90 is 10 tokens into the 20-token buffer → −0.5; length 100 → −1
  np.testing.assert_allclose(reward, [1.5, 1 - 0.5, 0.5 - 1.0, 0.0])


def test_single_update_skips_the_old_logprob_pass_and_equals_recomputing():
  from rl_jax import advantages, objectives
  from rl_jax.models import init_params, tiny_config
  from rl_jax.train import Rollouts, init_state, make_logprob_fn, make_rl_step, rl_iteration
  cfg = tiny_config(16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32, max_seq_len=16)
  params = init_params(cfg, jax.random.PRNGKey(0))
  opt = optax.sgd(0.5)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 16, (4, 7)).astype(np.int32)
  attn = np.ones_like(tokens)
  cmask = np.ones((4, 4), np.float32)
  cmask[1, 2:] = 0
  ro = Rollouts(tokens, attn, tokens[:, 3:], cmask, np.zeros((4, 4), np.float32))
  rewards = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
  calls = []
  lp = make_logprob_fn(cfg, prompt_len=3)
  counting = lambda *a: (calls.append(1), lp(*a))[1]
  for objective in ("grpo", "gspo", "cispo"):
    fn = objectives.get(objective)
    kw = {"beta": 0.0} if registry.takes(fn, "beta") else {}
    step = make_rl_step(cfg, opt, fn, kw, prompt_len=3)
    outs = []
    for recompute in (False, True):
      calls.clear()
      st, m = rl_iteration(init_state(params, opt, jax.random.PRNGKey(1)), step, counting, ro, rewards,
                           advantages.get("grpo"), recompute_old_logp=recompute)
      assert len(calls) == int(recompute)
      outs.append((st.params, m))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), outs[0][0], outs[1][0])
    assert outs[0][1]["loss"] == pytest.approx(outs[1][1]["loss"], abs=1e-6)
    assert not np.allclose(outs[0][0]["embed"], params["embed"])          # the update did something


def test_arithmetic_tiny_keeps_whole_groups_in_mini_batches_for_gtpo(tmp_path, monkeypatch):
  """GTPO reads the group layout of a mini-batch (group_size), so its mini-batches must hold whole groups."""
  from rl_jax.experiments import arithmetic_tiny
  from rl_jax import loop, objectives
  assert loop.needs_groups(objectives.get("gtpo")) and not loop.needs_groups(objectives.get("grpo"))
  seen = []
  real = loop.rl_iteration

  def spy(*args, **kw):
    seen.append(kw.get("keep_groups", False))
    return real(*args, **kw)

  monkeypatch.setattr(loop, "rl_iteration", spy)
  for objective in ("gtpo", "grpo"):
    cfg = arithmetic_tiny.Config(run_dir=str(tmp_path / objective), objective=objective,
                                 **dict(TINY["arithmetic_tiny"], minibatches=2))
    arithmetic_tiny.main(cfg)
  assert seen == [True, True, False, False]


def test_gsm8k_dcpo_advantage_carries_per_question_statistics_and_resumes_exactly(gsm8k, tmp_path, monkeypatch):
  """--advantage=dcpo: each step's advantages are DCPO's SAS over the question's earlier groups (float64 loop
  reference), and a resumed run rebuilds the statistics from rewards.jsonl, so it equals the uninterrupted one."""
  from reference import advantages_np as ref
  from rl_jax import loop

  _varied_rewards(gsm8k, monkeypatch)
  monkeypatch.setattr(gsm8k, "train_order", lambda cfg, n: np.array([11, 42]))   # the same two questions each step
  fed = []
  real = loop.rl_iteration

  def recording(state, rl_step, logprob_fn, ro, rewards, adv_fn, **kw):
    fed.append(np.asarray(adv_fn(rewards)))
    return real(state, rl_step, logprob_fn, ro, rewards, adv_fn, **kw)

  monkeypatch.setattr(loop, "rl_iteration", recording)
  tiny = dict(GSM8K_TINY, rl_steps=3, group_size=4, advantage="dcpo", objective="dcpo", eval_sets="")
  gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "full"), **tiny))
  log = read_metrics(tmp_path / "full" / "rewards.jsonl")
  assert [r["question_ids"] for r in log] == [[11, 42]] * 3
  state = {}
  for row, adv in zip(log, fed):
    expected, state = ref.dcpo(np.array(row["rewards"]), row["question_ids"], state)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
  assert any(np.ptp(r["rewards"], axis=1).max() > 0 for r in log[1:])   # the history had something to act on
  stats = loop.replay_dcpo_stats(log, 50)
  for q, (n, mu, sd) in state.items():
    assert (int(stats.count[q]), float(stats.mean[q]), float(stats.std[q])) == pytest.approx((n, mu, sd), abs=1e-6)

  gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "cut"), **dict(tiny, rl_steps=1)))   # "killed" after 1 step
  gsm8k.main(gsm8k.Config(run_dir=str(tmp_path / "cut"), **tiny))
  drop = ("gen_seconds", "step_seconds", "tokens_per_s", "time")
  a, b = (
      [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / d / "metrics.jsonl")]
      for d in ("full", "cut"))
  assert a == b
  assert read_metrics(tmp_path / "cut" / "rewards.jsonl") == log
  np.testing.assert_allclose(fed[-1], fed[2], rtol=0, atol=0)   # the resumed third step fed the same advantages


def test_gsm8k_advantage_choices(gsm8k):
  from rl_jax import loop
  assert {"grpo", "dr_grpo", "rloo", "ngrpo"} <= set(loop.reward_advantages())
  assert "tempo" not in loop.reward_advantages()                   # needs the tokens, not only the rewards
  assert gsm8k.Config(advantage="tempo").advantage == "tempo"      # ... which the loop supplies
  with pytest.raises(ValueError, match="cannot run here: it needs .*'paths'"):
    gsm8k.Config(advantage="treepo")
  with pytest.raises(ValueError, match="dynamic_sampling"):
    gsm8k.Config(advantage="dcpo", dynamic_sampling=True)
