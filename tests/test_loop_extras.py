"""Reward shaping and data curation in the RL loop (rl_jax.loop_extras): each choice runs one RL step of both
experiments from the command line, bad choices and keywords are refused before any compute, and the
host-side rules (r − c + shaped(c), VAS draws, ARPO row swaps, ReST masks) against hand values."""

import json

import numpy as np
import pytest

from rl_jax import loop, loop_extras
from rl_jax.experiments import arithmetic_tiny as exp
from rl_jax.metrics_log import read_metrics
from rl_jax.rewards import group_shaping as gs
from rl_jax.train import Rollouts

TINY = ["--digits=1", "--d_model=16", "--n_layers=1", "--sft_steps=0", "--rl_steps=1", "--prompts_per_step=2",
        "--group_size=2", "--epochs=1", "--minibatches=1", "--eval_every=1", "--eval_size=2",
        "--checkpoint_every=0", "--progress_bar=false"]

CHOICES = [["--reward_shaping=kimi", "--reward_shaping.weight=0.5"],
           ["--reward_shaping=grpo_lambda", "--reward_shaping.threshold=0.25"],
           ["--reward_shaping=effort", "--reward_shaping.effort=0.5"],
           ["--reward_shaping=tlts", "--reward_shaping.start=4", "--reward_shaping.end=2"],
           ["--prompt_sampling=vas", "--prompt_sampling.mix=0.8"],
           ["--replay=arpo", "--replay.size=2"],
           ["--group_filter=rest", "--group_filter.min_std=0.1"]]


@pytest.mark.parametrize("argv", CHOICES, ids=[a[0][2:] for a in CHOICES])
def test_each_choice_runs_one_step_of_arithmetic(argv, tmp_path):
  cfg = loop.command_line(exp.Config(), TINY + [f"--run_dir={tmp_path}", *argv])
  key, name = argv[0][2:].split("=")
  assert getattr(cfg, key) == name and getattr(cfg, f"{key}_args") == ",".join(a.split(".", 1)[1] for a in argv[1:])
  out = exp.main(cfg)
  assert len(out["history"]) == 1 and np.isfinite(out["history"][0]["loss"])
  record = read_metrics(tmp_path / "rewards.jsonl")[0]
  assert ("correct" in record) == (key == "prompt_sampling")


def test_vas_resumes_with_the_pass_rates_of_the_logged_steps(tmp_path):
  kw = dict(_tiny(tmp_path), rl_steps=3, checkpoint_every=1, prompt_sampling="vas", sft_steps=3, sft_batch=8)
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "full"))))
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "cut"), rl_steps=1)))
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "cut"))))
  full, cut = (read_metrics(tmp_path / d / "rewards.jsonl") for d in ("full", "cut"))
  assert [r["question_ids"] for r in cut] == [r["question_ids"] for r in full] and len(full) == 3


def test_hapo_adaptive_temperature_runs_and_resumes_with_the_logged_statistics(tmp_path):
  # a warmed-up model (peaked next-token distributions, so the temperature changes what is sampled)
  kw = dict(_tiny(tmp_path), rl_steps=2, checkpoint_every=1, objective="hapo", temperature_tau=0.5, sft_steps=40,
            sft_batch=32, d_model=32, prompts_per_step=4, group_size=4)
  full = exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "full"))))["history"]
  assert all(np.isfinite(r["loss"]) and r["temperature_scale"] >= 0 for r in full)
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "cut"), rl_steps=1)))
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "cut"))))
  rows = {d: [r for r in read_metrics(tmp_path / d / "metrics.jsonl") if r["phase"] == "rl"] for d in ("full", "cut")}
  for key in ("loss", "reward", "entropy", "temperature_center", "temperature_scale"):   # same rollouts
    assert [r[key] for r in rows["cut"]] == [r[key] for r in rows["full"]], key


@pytest.mark.parametrize("name", ["hapo_tlga", "reinforce_pp", "reinforce_pp_baseline"])
def test_mask_level_advantages_run_one_step(name, tmp_path):
  assert name in loop.reward_advantages(loop.MASK_ADVANTAGE)
  out = exp.main(loop.command_line(exp.Config(), TINY + [f"--run_dir={tmp_path}", f"--advantage={name}"]))
  assert len(out["history"]) == 1 and np.isfinite(out["history"][0]["loss"])


BAD = [(dict(temperature_tau=1.0, objective="hapo"), "temperature_tau"),
       (dict(temperature_tau=0.05), "objective=hapo"),
       (dict(temperature_tau=0.05, objective="hapo", aot="v5p-8"), "ahead-of-time"),
       (dict(reward_shaping="length"), "Unknown reward_shaping 'length'"),
       (dict(reward_shaping="kimi", reward_shaping_args="wieght=1"), r"takes no \['wieght'\]"),
       (dict(reward_shaping="kimi", reward_shaping_args="weight=big"), "expects float"),
       (dict(reward_shaping="tlts", reward_shaping_args="step=3"), "step is set by the run"),
       (dict(reward_shaping_args="weight=1"), "without --reward_shaping"),
       (dict(prompt_sampling="vas", prompt_sampling_args="mix=1.5"), "mix"),
       (dict(prompt_sampling="vas", prompt_sampling_args="prior=2"), "prior"),
       (dict(prompt_sampling="vas", dynamic_sampling=True), "dynamic_sampling"),
       (dict(replay="arpo", dynamic_sampling=True), "dynamic_sampling"),
       (dict(replay="arpo", replay_args="size=0"), "size"),
       (dict(replay="per"), "Unknown replay"),
       (dict(group_filter="rest", group_filter_args="min_std=-1"), "min_std"),
       (dict(group_filter="dapo"), "Unknown group_filter")]


@pytest.mark.parametrize("kw,match", BAD, ids=[m for _, m in BAD])
def test_bad_choices_are_config_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    exp.Config(**kw)


def test_task_dependent_refusals_come_before_any_compute(tmp_path, monkeypatch):
  # arithmetic answers have one format: Ada-GRPO is refused when the run is built (before the warm-up).
  monkeypatch.setattr(exp, "warm_up", lambda *a: pytest.fail("computed before refusing"))
  with pytest.raises(ValueError, match="ada_grpo needs the task's response formats"):
    exp.main(exp.Config(**dict(_tiny(tmp_path), reward_shaping="ada_grpo")))
  with pytest.raises(ValueError, match="start"):   # end > start: the dry run of the shaping
    exp.main(exp.Config(**dict(_tiny(tmp_path), reward_shaping="tlts", reward_shaping_args="start=4,end=8")))


def _tiny(tmp_path):
  return dict(digits=1, d_model=16, n_layers=1, sft_steps=0, rl_steps=1, prompts_per_step=2, group_size=2, epochs=1,
              minibatches=1, eval_size=2, checkpoint_every=0, progress_bar=False, run_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------- host rules

class FakeTask:
  max_new_tokens, num_questions, response_formats = 8, 6, True

  def prompts_for(self, ids):
    return loop.Prompts(np.zeros((len(ids), 1), np.int32), np.ones((len(ids), 1)), list(ids), np.asarray(ids))


def _extras(**kw):
  return loop_extras.Extras(exp.Config(**kw), FakeTask())


def _rollouts(p, g, t=3, seed=0):
  rng = np.random.default_rng(seed)
  comp = rng.integers(1, 9, (p * g, t))
  cmask = (np.arange(t)[None] < rng.integers(1, t + 1, (p * g, 1))).astype(np.int32)
  tokens = np.concatenate([np.full((p * g, 2), 7), comp], 1)
  attn = np.concatenate([np.ones((p * g, 2), np.int32), cmask], 1)
  return Rollouts(tokens, attn, comp, cmask, rng.normal(size=(p * g, t)).astype(np.float32))


def test_shaping_replaces_only_the_correctness_part():
  ro = _rollouts(2, 3)
  lengths = ro.completion_mask.sum(1).reshape(2, 3).astype(np.float32)
  correct = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
  rewards = correct + 0.1                                       # e.g. a format bonus on every sample
  prompts = FakeTask().prompts_for([0, 1])
  for name, args, want in [
      ("kimi", "weight=0.5", correct + 0.5 * np.asarray(gs.kimi_length_reward(correct, lengths))),
      ("grpo_lambda", "threshold=0.5", np.asarray(gs.grpo_lambda_rewards(correct, lengths))),
      ("effort", "effort=0.5,coef=2", np.asarray(gs.effort_rewards(correct, lengths, [0.5, 0.5], coef=2.0)))]:
    ex = _extras(reward_shaping=name, reward_shaping_args=args)
    _, s = ex.score(ro, prompts, loop.Scored(rewards, {}, correct=correct), step=0)
    np.testing.assert_allclose(s.rewards, want + 0.1, rtol=1e-6)
    assert s.row["correct_reward"] == pytest.approx(0.5)
  # TLTS at step 1 of 2 (rl_steps), budget 4 → 2: B = round(4·(1/2)^½) = 3; length 3 → no penalty.
  ex = _extras(reward_shaping="tlts", reward_shaping_args="start=4,end=2", rl_steps=2)
  _, s = ex.score(ro, prompts, loop.Scored(correct, {}), step=1)
  want = correct - 0.5 * np.maximum(lengths - 3, 0) / 3
  np.testing.assert_allclose(s.rewards, want, rtol=1e-6)
  # Ada-GRPO reads the task's formats: one rare format in a group of 3 at t = 0 gets α = 3.
  ex = _extras(reward_shaping="ada_grpo", rl_steps=4)
  fmt = np.array([[0, 0, 1], [2, 2, 2]])
  _, s = ex.score(ro, prompts, loop.Scored(correct, {}, formats=fmt), step=0)
  np.testing.assert_allclose(s.rewards, [[1.5, 0, 3], [0, 0, 1]], rtol=1e-6)


def test_vas_draws_from_pass_rates_and_rebuilds_them_from_the_log():
  ex = _extras(prompt_sampling="vas", prompt_sampling_args="mix=1", prompts_per_step=2, group_size=2)
  ex.observe([0, 1, 2, 3], [[1, 1], [0, 0], [1, 0], [0, 1]])
  ex.observe([4, 5], [[1, 1], [0, 0]])
  # only questions 2 and 3 have p(1 − p) > 0: with mix = 1 every draw is {2, 3}
  for step in range(5):
    assert sorted(ex.prompts(step, 0).question_ids) == [2, 3]
  ids = ex.prompts(7, 0).question_ids
  np.testing.assert_array_equal(ids, ex.prompts(7, 0).question_ids)        # seeded by the step
  w = np.asarray(loop_extras.vas_draw({0: 1.0}, 3, 3, np.random.default_rng(0), mix=1.0))
  assert len(w) == 3 and set(w) <= {1, 2}             # fewer positive weights than n: with replacement
  rows = [{"step": 1, "question_ids": [0, 1], "correct": [[1, 1], [1, 0]]},
          {"step": 2, "question_ids": [1, 5], "correct": [[0, 0], [0, 1]]}]
  ex.restore(rows, 2)
  assert ex.pass_rates == {0: 1.0, 1: 0.0, 5: 0.5}
  with pytest.raises(RuntimeError, match="afresh"):
    ex.restore(rows[:1], 2)
  with pytest.raises(ValueError, match="pool"):
    loop_extras.vas_draw({}, 3, 4, np.random.default_rng(0))


def test_arpo_swaps_a_stored_success_into_the_first_row_of_an_all_negative_group():
  ex = _extras(replay="arpo", replay_args="size=2")
  prompts = FakeTask().prompts_for([4, 5])
  first = _rollouts(2, 2, seed=1)
  ro, s = ex.score(first, prompts, loop.Scored(np.array([[0, 1], [0, 0]], np.float32), {}), step=0)
  assert s.row["replayed"] == 0 and set(ex.buffer) == {4}                  # nothing stored yet for 5
  assert np.array_equal(ro.tokens, first.tokens)
  second = _rollouts(2, 2, seed=2)
  ro, s = ex.score(second, prompts, loop.Scored(np.array([[0, 0], [0, 0]], np.float32), {}), step=1)
  assert s.row["replayed"] == 1
  np.testing.assert_array_equal(s.rewards, [[1, 0], [0, 0]])
  for field in ("completion", "completion_mask", "rollout_logp"):          # row 0 ← the success (row 1 of step 0)
    np.testing.assert_array_equal(getattr(ro, field)[0], getattr(first, field)[1])
    np.testing.assert_array_equal(getattr(ro, field)[1:], getattr(second, field)[1:])
  np.testing.assert_array_equal(ro.tokens[0], np.concatenate([second.tokens[0, :2], first.completion[1]]))
  np.testing.assert_array_equal(second.tokens, _rollouts(2, 2, seed=2).tokens)   # the inputs are not modified


def _buffer_fields(buffer: dict) -> list:
  return [(q, [(tuple(np.asarray(getattr(it, k)).tolist() for k in loop_extras.ITEM_ARRAYS),
                tuple(str(getattr(it, k).dtype) for k in loop_extras.ITEM_ARRAYS), it.reward, it.correct, it.format)
               for it in items]) for q, items in buffer.items()]


def test_arpo_buffer_round_trips_through_its_json_record_and_replays_the_same_rows():
  ex = _extras(replay="arpo", replay_args="size=2")
  prompts = FakeTask().prompts_for([4, 5])
  for step, seed in enumerate((1, 3)):   # question 4 stores 1 then 2 successes, question 5 one
    ex.score(_rollouts(2, 2, seed=seed), prompts, loop.Scored(np.array([[0, 1], [step, 1]], np.float32), {}), step)
  record = json.loads(json.dumps(loop_extras.replay_record(ex.buffer)))   # as the checkpoint's JSON item
  restored = _extras(replay="arpo", replay_args="size=2")
  restored.buffer = loop_extras.buffer_from_record(record, num_questions=6, size=2, width=3)
  assert _buffer_fields(restored.buffer) == _buffer_fields(ex.buffer) and [len(v) for v in ex.buffer.values()] == [2, 2]
  negative = loop.Scored(np.zeros((2, 2), np.float32), {})
  a, sa = ex.score(_rollouts(2, 2, seed=5), prompts, negative, 2)
  b, sb = restored.score(_rollouts(2, 2, seed=5), prompts, negative, 2)
  assert sa.row["replayed"] == sb.row["replayed"] == 2
  for x, y in zip(a + (sa.rewards,), b + (sb.rewards,)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("corrupt, match", [
    (lambda r: r.update(format=2), "format"),
    (lambda r: r["questions"][0].__setitem__(0, 6), "outside"),
    (lambda r: r["questions"].append(r["questions"][0]), "repeated"),
    (lambda r: r["questions"][0][1].extend(r["questions"][0][1] * 2), "items"),
    (lambda r: r["questions"][0][1][0].update(reward=float("nan")), "finite"),
    (lambda r: r["questions"][0][1][0].update(code="x"), "an item is not"),
    (lambda r: r["questions"][0][1][0]["arrays"]["logp"].update(dtype="object"), "dtype"),
    (lambda r: r["questions"][0][1][0]["arrays"]["logp"].update(data="!!"), "base64"),
    (lambda r: r["questions"][0][1][0]["arrays"]["cmask"].update(data="AAAA"), "bytes")])
def test_a_corrupt_replay_record_is_refused_naming_what_is_wrong(corrupt, match):
  ex = _extras(replay="arpo")
  ex.score(_rollouts(1, 2, seed=1), FakeTask().prompts_for([4]), loop.Scored(np.array([[0, 1]], np.float32), {}), 0)
  record = json.loads(json.dumps(loop_extras.replay_record(ex.buffer)))
  loop_extras.buffer_from_record(record, num_questions=6, size=2, width=3)
  corrupt(record)
  with pytest.raises(ValueError, match=match):
    loop_extras.buffer_from_record(record, num_questions=6, size=2, width=3)


def test_arpo_resumed_run_equals_the_uninterrupted_run(tmp_path):
  # every row counts as a success (min_reward < 0), so the untrained model's all-negative groups of questions met
  # before are replayed: the resumed steps need the buffer of the steps before the cut
  kw = dict(_tiny(tmp_path), rl_steps=REPLAY_STEPS, checkpoint_every=1, replay="arpo", replay_args="min_reward=-1",
            prompts_per_step=8)
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "full"))), plot=False)
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "cut"), rl_steps=REPLAY_CUT)), plot=False)
  exp.main(exp.Config(**dict(kw, run_dir=str(tmp_path / "cut"))), plot=False)
  rows = {d: [r for r in read_metrics(tmp_path / d / "metrics.jsonl") if r["phase"] == "rl"] for d in ("full", "cut")}
  assert any(r["replayed"] for r in rows["full"][REPLAY_CUT:])   # the resumed steps replay stored successes
  for key in ("loss", "reward", "replayed", "entropy"):   # entropy: of the trained rows, replayed ones included
    assert [r[key] for r in rows["cut"]] == [r[key] for r in rows["full"]], key


REPLAY_STEPS, REPLAY_CUT = 4, 2


def test_rest_filter_masks_rejected_groups():
  ex = _extras(group_filter="rest", group_filter_args="max_mean=0.6")
  np.testing.assert_array_equal(ex.valid_rows(np.array([[1, 1], [1, 0], [0, 0]], np.float32)),
                                [False, False, True, True, False, False])
  assert _extras().valid_rows(np.ones((2, 2))) is None


def test_arm_format_labels():
  assert [gs.arm_format(t) for t in ("  <COT> x", "<LONG_COT>", "<ANSWER>4", "The answer", "x <CODE>")] == [2, 4, 1, 0, 0]


# ------------------------------------------------------------------------------------------- GSM8K

def _gsm8k_one_step(tmp_path, *choices):
  from rl_jax.models import smollm2_gguf_path
  try:
    smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(f"{e} (the GSM8K experiment uses its tokenizer)")
  from rl_jax.experiments import gsm8k_smollm2 as g
  argv = ["--model=tiny-random", "--rl_steps=1", "--prompts_per_step=2", "--group_size=2", "--max_new_tokens=8",
          "--eval_size=1", "--eval_max_new_tokens=4", "--eval_batch=1", "--checkpoint_every=0", "--progress_bar=false",
          f"--run_dir={tmp_path}", *choices]
  with pytest.raises(ValueError, match="Unknown reward_shaping"):
    g.make_config(argv + ["--reward_shaping=short"])
  g.main(g.make_config(argv))
  rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["phase"] == "rl"]
  assert len(rows) == 1 and np.isfinite(rows[0]["loss"])
  return rows[0], json.loads((tmp_path / "rewards.jsonl").read_text().splitlines()[0])


def test_gsm8k_runs_one_step_with_ada_grpo_replay_and_filter(tmp_path):
  row, _ = _gsm8k_one_step(tmp_path, "--reward_shaping=ada_grpo", "--replay=arpo", "--group_filter=rest")
  assert row["replayed"] == 0 and "correct_reward" in row


@pytest.mark.slow   # VAS draws from every train question, so the run checks all their prompt lengths first
def test_gsm8k_runs_one_step_with_vas_and_each_length_shaping(tmp_path):
  _, record = _gsm8k_one_step(tmp_path / "vas", "--prompt_sampling=vas")
  assert "correct" in record
  for name in ("kimi", "grpo_lambda", "effort", "tlts"):
    row, _ = _gsm8k_one_step(tmp_path / name, f"--reward_shaping={name}")
    assert "correct_reward" in row
