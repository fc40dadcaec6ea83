"""Table 5: SmolLM2-135M-Instruct on GSM8K — test accuracy before and after a short GRPO run, and after a
run with the best objective of table 1.

Each cell is one `rl_jax.experiments.gsm8k_smollm2` run (same data order, budget and evaluation; only the
objective and the seed change), in its own folder under `<out>/gsm8k/`. Greedy accuracy and, with
samples, pass@k and maj@k (temperature 0.6; unbiased pass@k estimator) on the first `eval_size` GSM8K
test problems. The "best objective" is the highest mean final accuracy in `<out>/objective_zoo.json`
(run table 1 first), or `--objective=NAME`; it trains with the advantage estimator table 1 pairs it with
(DCPO: its stateful SAS), GRPO with the GRPO advantage.

Run:  python -m rl_jax.experiments.tables.gsm8k [--quick] [--seeds=0,1,2] [--objective=NAME] [--rl_steps=8]
      [--eval_size=100] [--eval_samples=8] [--epochs=1] [--minibatches=1] [--finished_only=true]
--finished_only=true runs nothing: it tables the cells that finished with these settings and lists the
missing ones, for a grid filled over several sessions (each cell resumes from its checkpoints).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from rl_jax.experiments import gsm8k_smollm2
from rl_jax.experiments.tables import common, objective_zoo

NAME = "gsm8k"
QUICK = dict(model="tiny-random", rl_steps=1, prompts_per_step=2, group_size=2, max_new_tokens=8, eval_size=2,
             eval_samples=2, eval_max_new_tokens=8, eval_batch=2, checkpoint_every=0)


def best_objective(args: common.Args) -> str:
  """--objective, else the best mean final accuracy of table 1's results, else dapo."""
  name = common.extra_value(args, "objective", "")
  if name:
    return name
  path = args.out / "objective_zoo.json"
  if path.exists():
    summary = json.loads(path.read_text())["summary"]
    return max(summary, key=lambda k: np.mean([x["accuracy"] for x in summary[k]]))
  return "dapo"


def cell_dir(args: common.Args, objective: str, seed: int) -> str:
  return str(args.out / NAME / f"{objective}_seed{seed}")


def objective_note(args: common.Args, best: str) -> str:
  """Where the second objective came from, for the table's notes."""
  if common.extra_value(args, "objective", ""):
    if best == "grpo":
      return "Only GRPO was run (--objective=grpo): no row for the best objective of table 1."
    return f"Second objective: {best}, chosen on the command line (--objective)."
  return f"Best objective of table 1: {best}."


def paired_advantage(objective: str) -> str:
  """The advantage estimator table 1 trains `objective` with (grpo for objectives not in table 1)."""
  for r in objective_zoo.RECIPES:
    if r.name == objective:
      return r.advantage
  return "grpo"


def cell_config(args: common.Args, objective: str, seed: int, overrides: dict) -> gsm8k_smollm2.Config:
  # The model before RL is the same for every objective: evaluate it once per seed (in the grpo cell).
  before_from = cell_dir(args, "grpo", seed) if objective != "grpo" else ""
  return gsm8k_smollm2.Config(objective=objective, advantage=paired_advantage(objective), seed=seed,
                              run_dir=cell_dir(args, objective, seed), resume=True, before_from=before_from,
                              **dict(overrides, progress_bar=False))


def run_cell(args: common.Args, objective: str, seed: int, overrides: dict) -> dict:
  return gsm8k_smollm2.main(cell_config(args, objective, seed, overrides))


def finished_cell(args: common.Args, objective: str, seed: int, overrides: dict):
  """The summary of a cell that finished with exactly these settings, else None (nothing is run)."""
  cfg = cell_config(args, objective, seed, overrides)
  d = pathlib.Path(cfg.run_dir)
  if not (d / "config.json").exists() or not (d / "summary.json").exists():
    return None
  summary = json.loads((d / "summary.json").read_text())
  previous = json.loads((d / "config.json").read_text())
  return summary if "after" in summary and gsm8k_smollm2.finished_with_same_settings(previous, cfg) else None


def cell_overrides(args: common.Args) -> dict:
  """gsm8k_smollm2 settings shared by every cell. --epochs / --minibatches > 1 make the updates off-policy,
  the only regime where the objectives' clipping differs (with 1 / 1 the ratio is 1 at every update)."""
  if args.quick:
    return dict(QUICK)
  return dict(rl_steps=common.extra_value(args, "rl_steps", 8), eval_size=common.extra_value(args, "eval_size", 100),
              eval_samples=common.extra_value(args, "eval_samples", 8), epochs=common.extra_value(args, "epochs", 1),
              minibatches=common.extra_value(args, "minibatches", 1))


KEYS = ("objective", "rl_steps", "eval_size", "eval_samples", "epochs", "minibatches", "finished_only")


def run_times(summary: dict) -> str:
  """A run's time for the table notes: the RL steps' total and each evaluation's ("train T + eval B / A", where
  "reused" marks an evaluation copied from another run or from "before"), or, for a summary written before
  train_seconds existed, the wall time of its last invocation."""
  if "train_seconds" not in summary:
    return f"{summary['wall_seconds']:.0f} (wall time of the last invocation)"
  def eval_seconds(tag):
    return f"{sum(m.get('seconds', 0.0) for m in summary.get(tag, {}).values()):.0f}"
  before = "reused" if summary.get("before_from") else eval_seconds("before")
  after = "reused" if summary.get("after_is_before") else eval_seconds("after")
  return f"train {summary['train_seconds']:.0f} + eval {before} / {after}"


def main(argv=()) -> dict:
  args = common.parse_args(argv, keys=KEYS, doc=__doc__)
  report = common.Report(NAME, args, argv)
  overrides = cell_overrides(args)
  k = overrides["eval_samples"]
  best = best_objective(args)
  objectives = ["grpo"] + ([best] if best != "grpo" else [])
  # --finished_only: tabulate the cells that finished with these settings and run nothing (a grid filled
  # over several sessions); missing cells are listed in the notes
  finished_only = common.extra_value(args, "finished_only", False)
  cell = finished_cell if finished_only else run_cell
  runs = {obj: [cell(args, obj, seed, overrides) for seed in args.seeds] for obj in objectives}
  missing = [f"{obj} seed {seed}" for obj in objectives for seed, r in zip(args.seeds, runs[obj]) if r is None]
  if all(r is None for rs in runs.values() for r in rs):
    raise SystemExit(f"--finished_only: no cell under {args.out / NAME} finished with these settings.")
  metrics = ["greedy"] + ([f"pass@{k}", f"maj@{k}"] if k else [])
  header = ["model", "eval (GSM8K test)"] + [m for m in metrics]
  rows = []
  # one "before" per seed: every cell of a seed shares it (the grpo cell's evaluation)
  before = [next((rs[i]["before"]["gsm8k"] for rs in runs.values() if rs[i] is not None), None)
            for i in range(len(args.seeds))]
  n = next(b["n"] for b in before if b is not None)
  rows.append(["SmolLM2-135M-Instruct" if not args.quick else "tiny-random", f"before RL (n={n})"]
              + [common.mean_std([b.get(m, float("nan")) if b else None for b in before]) for m in metrics])
  for obj in objectives:
    after = [r["after"]["gsm8k"] if r else None for r in runs[obj]]
    label = f"after {overrides['rl_steps']} {obj} steps" + (" (best of table 1)" if obj == best and obj != "grpo" else "")
    rows.append(["", label] + [common.mean_std([a.get(m, float("nan")) if a else None for a in after]) for m in metrics])
  times = {obj: [run_times(r) for r in rs if r] for obj, rs in runs.items()}
  cfg = gsm8k_smollm2.Config(**overrides)
  notes = [f"Each run: {cfg.rl_steps} RL steps × {cfg.prompts_per_step} GSM8K train questions × {cfg.group_size} "
           f"samples (≤ {cfg.max_new_tokens} new tokens, temperature {cfg.temperature}), {cfg.epochs} epoch(s) × "
           f"{cfg.minibatches} mini-batch(es) per batch, Adam lr {cfg.lr}; evaluation on "
           f"the first {cfg.eval_size} test problems, ≤ {cfg.eval_max_new_tokens} new tokens"
           + (f", {k} samples at temperature 0.6 for pass@{k} / maj@{k}" if k else "") +
           f"; mean ± std over seeds {list(args.seeds)} (the seed changes the data order and the samples).",
           "Time per run, per seed (s): " + "; ".join(f"{o}: {', '.join(ts)}" for o, ts in times.items()),
           objective_note(args, best),
           "Objective / advantage: " + "; ".join(f"{o} / {paired_advantage(o)}" for o in objectives) + "."]
  notes += trajectory_notes(args, objectives, runs)
  if missing:
    notes.append("Not run yet (left out of the mean ± std; n = seeds present): " + ", ".join(missing) + ".")
  curves = {}
  for obj in objectives:
    ys = [[row["reward"] for row in common_read(args, obj, seed)] for seed, r in zip(args.seeds, runs[obj]) if r]
    m = min((len(y) for y in ys), default=0)
    if m:
      arr = np.array([y[:m] for y in ys])
      curves[f"{obj} ({len(ys)} seed{'s' if len(ys) > 1 else ''})"] = (list(range(1, m + 1)), arr.mean(0),
                                                                     arr.std(0, ddof=1) if len(ys) > 1 else None)
  common.plot_curves(report.path.with_suffix(".png"), curves, xlabel="RL step", ylabel="mean rollout reward",
                     title="GSM8K training reward (mean ± std over seeds)")
  report.write("Table 5 — SmolLM2-135M-Instruct on GSM8K", common.markdown_table(header, rows), notes,
               {"runs": {o: [{"before": r["before"], "after": r["after"]} if r else None for r in rs]
                         for o, rs in runs.items()},
                "config": overrides})
  return runs


def steps_with_gradient(rows: list) -> int:
  """RL steps in which some sampled token had a non-zero advantage, i.e. the loss had a gradient (β = 0).
  With a 2% success rate most GSM8K groups are all wrong, so this is often a small part of the run."""
  return sum(1 for r in rows if r.get("nonzero_adv_frac", 0.0) > 0)


TRAJECTORY_KEYS = ("reward", "nonzero_adv_frac", "loss", "grad_norm", "entropy")


def same_trajectory(rows: list, ref_rows: list, *, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
  """Whether two runs logged the same per-step training numbers (TRAJECTORY_KEYS), to float32 rounding.

  Two objectives that coincide on these batches (e.g. DCPO and GRPO with on-policy updates and no revisited
  question) give the same numbers up to the order of floating-point operations; anything else diverges.
  """
  if not rows or len(rows) != len(ref_rows):
    return False
  return all(np.isclose(r[k], q[k], rtol=rtol, atol=atol) for r, q in zip(rows, ref_rows) for k in TRAJECTORY_KEYS)


def same_evaluation(a: dict, b: dict) -> bool:
  """Whether two evaluation summaries give the same scores (every greedy / pass / avg / maj entry)."""
  keys = [k for k in a if k == "greedy" or k.split("@")[0] in ("pass", "avg", "maj")]
  return bool(keys) and all(k in b and a[k] == b[k] for k in keys)


def trajectory_notes(args: common.Args, objectives: list, runs: dict) -> list:
  """Per-seed count of steps with a gradient, which cells repeat the grpo cell of their seed, and which cells
  RL left unchanged (their "after" is their "before")."""
  out = ["RL steps with a gradient (some non-zero advantage), per seed: " + "; ".join(
      f"{o}: " + ", ".join(f"seed {s}: {steps_with_gradient(common_read(args, o, s))}/{len(common_read(args, o, s))}"
                           for s, r in zip(args.seeds, runs[o]) if r) for o in objectives) + "."]
  for o in objectives[1:]:
    same = [s for s, r, g in zip(args.seeds, runs[o], runs["grpo"]) if r and g
            and same_trajectory(common_read(args, o, s), common_read(args, "grpo", s))
            and same_evaluation(r["after"]["gsm8k"], g["after"]["gsm8k"])]
    if same:
      out.append(f"{o} repeated grpo's run for seed(s) {same}: the same reward, share of non-zero advantages, "
                 f"loss, gradient norm and entropy at every step (to float32 rounding, rtol 1e-4) and the same "
                 f"after-RL scores.")
  still = [f"{o} seed {s}" for o in objectives for s, r in zip(args.seeds, runs[o]) if r and r.get("after_is_before")]
  if still:
    out.append("Weights bit-identical to the initial model after RL (no step had a gradient), so the after-RL "
               "scores are the before-RL evaluation, not made again: " + ", ".join(still) + ".")
  return out


def common_read(args: common.Args, objective: str, seed: int) -> list:
  from rl_jax.metrics_log import read_metrics
  path = args.out / NAME / f"{objective}_seed{seed}" / "metrics.jsonl"
  return [r for r in read_metrics(path) if "reward" in r] if path.exists() else []


if __name__ == "__main__":
  main(sys.argv[1:])
