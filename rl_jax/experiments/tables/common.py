"""Shared pieces of the table runners: tables 1, 2 and 4 as grids of `arithmetic_tiny` configs over the
RL loop (`rl_jax.loop`), and (imported from `report.py`) the command line, mean ± std, markdown and plots
of every table.

Every table module follows the same shape: `main(argv)` parses `--quick`, `--seeds=0,1,2`, `--out=DIR`,
runs its cells, writes `<out>/<name>.md` (the table with the command, machine, date and wall time that
made it), `<out>/<name>.png` and `<out>/<name>.json` (every per-seed number), and returns the rows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
import shutil
import sys
import time
from typing import Callable, Sequence, Union

import numpy as np

from rl_jax.experiments import arithmetic_tiny
from rl_jax.mc_values import SPO_CHAIN_INTERVAL, SPO_CHAIN_SAMPLES, SPO_CHAIN_THRESHOLD  # noqa: F401
from rl_jax.tree_rollout import first_width  # noqa: F401

from rl_jax.experiments.tables.report import (RESULTS, Args, Report, curve_style, extra_value, machine,  # noqa: F401
                                       markdown_table, mean_std, paired_difference, parse_args, plot_curves,
                                       warmup_note)

# ------------------------------------------------------------------------------ the arithmetic grid

@dataclasses.dataclass(frozen=True)
class Recipe:
  """One method in a table: objective (a name or your function) + advantage estimator + rollout kind, i.e.
  the settings by which a cell's `arithmetic_tiny` run differs from the table's shared config.

  advantage: any estimator the loop runs (`rl_jax.loop.check_methods`): group estimators, "dcpo", "tempo",
  "spo_chain"; with rollout="tree" (TreePO tree rollouts) "grpo", "tempo", "treepo" or "spo_tree".
  """
  name: str
  objective: Union[str, Callable] = "grpo"
  advantage: str = "grpo"
  objective_kw: tuple = ()          # (key, value) pairs added to the objective's keyword arguments
  rollout: str = "group"            # "group": G independent samples; "tree": TreePO tree rollouts

  @property
  def kw(self) -> dict:
    return dict(self.objective_kw)


# Every cell of tables 1, 2 and 4 is an arithmetic_tiny run with these settings (the experiment's own,
# evaluated every 5 RL steps) and its recipe's method; --quick shrinks them. Plain rows (packed=False): the
# packed layout's row count and length change with every mini-batch of these short completions, and each new
# shape compiles the train step again (about 15 s each on a loaded 2-core CPU, against 0.2 s for a whole plain
# RL step); the two layouts give the same metrics and parameters (tests/test_packed_layout.py).
TABLE = arithmetic_tiny.Config(eval_every=5, checkpoint_every=0, progress_bar=False, packed=False)
QUICK = dataclasses.replace(TABLE, sft_steps=10, rl_steps=2, prompts_per_step=4, group_size=4, epochs=1,
                            minibatches=2, eval_every=2, eval_size=16)
TARGET_ACCURACY = 0.6       # "steps to accuracy" threshold


def budget_record(cfg: arithmetic_tiny.Config) -> dict:
  """The settings a table's json stores as its "budget" (what --retable requires to match)."""
  return {"sft_steps": cfg.sft_steps, "rl_steps": cfg.rl_steps, "prompts": cfg.prompts_per_step,
          "group": cfg.group_size, "epochs": cfg.epochs, "minibatches": cfg.minibatches, "lr": cfg.lr,
          "eval_every": cfg.eval_every, "eval_size": cfg.eval_size, "target_accuracy": TARGET_ACCURACY}


@functools.lru_cache(maxsize=8)
def warm_start(cfg: arithmetic_tiny.Config):
  """The post-warm-up state and its accuracy for cfg's seed and warm-up (shared by every recipe of that seed)."""
  task, model_cfg = arithmetic_tiny.build(cfg)
  return arithmetic_tiny.warm_start(cfg, task, model_cfg)


def slug(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def recipe_config(recipe: Recipe, seed: int, budget: arithmetic_tiny.Config, runs: pathlib.Path):
  """The cell's config: the table's, the seed, the recipe's method; its run dir under `runs`."""
  named = isinstance(recipe.objective, str)
  return dataclasses.replace(
      budget, seed=seed, objective=recipe.objective if named else "grpo", advantage=recipe.advantage,
      objective_args=",".join(f"{k}={v}" for k, v in recipe.objective_kw) if named else "", rollout=recipe.rollout,
      run_dir=str(runs / f"{slug(recipe.name)}_seed{seed}"))


def run_recipe(recipe: Recipe, seed: int, budget: arithmetic_tiny.Config, runs: pathlib.Path) -> dict:
  """One cell: `arithmetic_tiny` through the RL loop from the seed's shared warm start, in a fresh run dir.

  Returns {"steps": [...per-step metrics...], "evals": [(step, accuracy), ...], "wall_s": RL seconds}.
  Rollout prompts per step are the same for every recipe of a seed (data position = step).
  """
  cfg = recipe_config(recipe, seed, budget, runs)
  shutil.rmtree(cfg.run_dir, ignore_errors=True)     # a table's cells start afresh
  warm_s = []

  def start(c, task, model_cfg):
    t = time.perf_counter()
    out = warm_start(dataclasses.replace(c, run_dir="", objective="grpo", advantage="grpo", objective_args="",
                                         rollout="group"))
    warm_s.append(time.perf_counter() - t)
    return out

  t0 = time.perf_counter()
  custom = None if isinstance(recipe.objective, str) else recipe.objective
  out = arithmetic_tiny.main(cfg, custom, recipe.kw if custom else None, begin=start, plot=False)
  return {"steps": out["history"], "evals": out["evals"], "wall_s": time.perf_counter() - t0 - sum(warm_s)}


def summarize(run: dict) -> dict:
  """Per-run numbers for the tables: final accuracy, means over RL steps, end-of-run entropy, steps to target."""
  steps, evals = run["steps"], run["evals"]
  reach = [s for s, a in evals if a >= TARGET_ACCURACY]
  mean = lambda k: float(np.mean([r[k] for r in steps])) if steps and k in steps[0] else float("nan")
  return {
      "accuracy": evals[-1][1],
      "best_accuracy": max(a for _, a in evals),
      "clip_frac": mean("clip_frac"),
      "nonzero_adv_frac": mean("nonzero_adv_frac"),
      "flat_group_signal": mean("flat_group_signal"),
      "token_ratio_std": mean("token_ratio_std"),
      "ratio_max": float(np.max([r.get("ratio_max", np.nan) for r in steps])) if steps else float("nan"),
      "entropy_end": float(steps[-1]["entropy"]) if steps else float("nan"),
      "tree_term_frac": mean("tree_term_frac"),
      "steps_to_target": float(reach[0]) if reach else float("nan"),
      "wall_s": run["wall_s"],
  }


def run_grid(recipes: Sequence[Recipe], seeds: Sequence[int], budget: arithmetic_tiny.Config, runs: pathlib.Path, *,
             log=print) -> dict:
  """name -> {"runs": [run per seed], "summary": [summary per seed]}; each cell's run dir is under `runs`."""
  out = {}
  for recipe in recipes:
    out[recipe.name] = {"runs": [], "summary": []}
  for seed in seeds:
    for recipe in recipes:
      run = run_recipe(recipe, seed, budget, runs)
      s = summarize(run)
      out[recipe.name]["runs"].append(run)
      out[recipe.name]["summary"].append(s)
      log(f"seed {seed} {recipe.name:>12s}: accuracy {s['accuracy']:.3f}  clip {s['clip_frac']:.4f}  "
          f"nonzero-adv {s['nonzero_adv_frac']:.3f}  entropy {s['entropy_end']:.3f}  ({s['wall_s']:.0f} s)")
      sys.stdout.flush()
  return out


def run_table(name: str, argv, recipes: Sequence[Recipe], quick: Sequence[str] = (), doc: str = "",
              baseline: str = ""):
  """The shared start of tables 1, 2 and 4: arguments, report, budget, the recipes to run (`quick` names
  the subset for --quick; empty = all; --rows=a,b names them, and must include `baseline`, the row the
  paired column subtracts) and their grid over the seeds. Returns (args, report, budget,
  recipes, grid, summaries name -> per-seed).

  --retable: the grid is read back from `<out>/<name>.json` (the per-seed numbers and curves of an earlier
  run with the same budget, seeds and rows) instead of trained, so a new table layout or note applies to a
  finished run; the report names the run the numbers come from."""
  retable = "--retable" in argv
  args = parse_args([a for a in argv if a != "--retable"], keys=("rows",), doc=doc)
  budget = QUICK if args.quick else TABLE
  recipes = select_rows(recipes, extra_value(args, "rows", ""), quick if args.quick else (), baseline)
  source = load_grid(args.out / f"{name}.json", recipes, args.seeds, budget) if retable else None
  report = Report(name, args, argv)
  if source is not None:
    grid, report.source = source
  else:
    grid = run_grid(recipes, args.seeds, budget, args.out / f"{name}_runs")
  return args, report, budget, recipes, grid, {n: cell["summary"] for n, cell in grid.items()}


def select_rows(recipes: Sequence[Recipe], rows: str, quick: Sequence[str] = (), baseline: str = "") -> list:
  """The recipes a run measures: those named in `rows` ("a,b,c", the --rows option; "" = every row), in the
  table's order, else the `quick` subset (--quick; empty = all). An unknown name, or `rows` without the
  `baseline` row, stops the run before any compute."""
  names = [n for n in rows.split(",") if n]
  unknown = sorted(set(names) - {r.name for r in recipes})
  if unknown:
    raise SystemExit(f"--rows: unknown row(s) {unknown}; this table has {[r.name for r in recipes]}.")
  if names and baseline and baseline not in names:
    raise SystemExit(f"--rows must include {baseline!r}, the row the paired column subtracts.")
  keep = names or quick
  return [r for r in recipes if not keep or r.name in keep]


def load_grid(path: pathlib.Path, recipes: Sequence[Recipe], seeds: Sequence[int], budget: arithmetic_tiny.Config):
  """(grid, source) from a grid table's json: the same budget, the same seeds and every recipe's row are
  required; source = the command, machine, date and wall time of the run that measured them."""
  if not path.exists():
    raise SystemExit(f"--retable: {path} not found; run the table without --retable first.")
  raw = json.loads(path.read_text())
  if raw.get("budget") != budget_record(budget):
    raise SystemExit(f"--retable: {path} was run with another budget: {raw.get('budget')}.")
  stored_seeds = raw.get("seeds")
  missing = [r.name for r in recipes if r.name not in raw["summary"]]
  if missing:
    raise SystemExit(f"--retable: {path} has no rows for {missing}.")
  for r in recipes:
    n = len(raw["summary"][r.name])
    if (stored_seeds is not None and list(stored_seeds) != list(seeds)) or n != len(seeds):
      raise SystemExit(f"--retable: {path} holds seeds {stored_seeds or f'({n} of them)'}, not {list(seeds)}; "
                       "pass its --seeds.")
  grid = {r.name: {"summary": raw["summary"][r.name], "runs": [{"evals": e} for e in raw["evals"][r.name]]}
          for r in recipes}
  source = raw.get("source") or {k: raw.get(k) for k in ("command", "machine", "date", "wall_s")}
  return grid, source


def write_grid_report(report: Report, title: str, plot_title: str, header, rows, notes, grid: dict,
                      budget: arithmetic_tiny.Config) -> dict:
  """Plots the accuracy curves of a run_grid result and writes the table; returns name -> per-seed summaries."""
  s = {name: cell["summary"] for name, cell in grid.items()}
  plot_curves(report.path.with_suffix(".png"), accuracy_curves(grid), xlabel="RL step", ylabel="greedy accuracy",
              title=plot_title)
  report.write(title, markdown_table(header, rows), notes,
               {"summary": s, "evals": {k: [r["evals"] for r in c["runs"]] for k, c in grid.items()},
                "budget": budget_record(budget)})
  return s


def warmup_accuracies(grid: dict) -> list:
  """Per seed, the greedy accuracy after the warm-up: the step-0 evaluation every run of a seed starts
  from (read from the grid, so a --retable or a 10-seed table does not train the warm-ups again)."""
  return [run["evals"][0][1] for run in next(iter(grid.values()))["runs"]]


def accuracy_curves(grid: dict) -> dict:
  """label -> (eval steps, mean accuracy over seeds, std over seeds) for plot_curves."""
  return curves_from_evals({name: [r["evals"] for r in cell["runs"]] for name, cell in grid.items()})


def curves_from_evals(evals: dict) -> dict:
  """evals: label -> per seed [(step, accuracy), ...] (as stored in a grid table's json) -> plot_curves input."""
  curves = {}
  for name, runs in evals.items():
    x = [s for s, _ in runs[0]]
    ys = np.array([[a for _, a in r] for r in runs])
    curves[name] = (x, ys.mean(0), ys.std(0, ddof=1) if len(runs) > 1 else None)
  return curves


def replot_grid(name: str, plot_title: str, argv: Sequence[str] = ()) -> dict:
  """`--replot`: redraws `<out>/<name>.png` from the per-seed curves in `<out>/<name>.json` (no training)."""
  args = parse_args([a for a in argv if a != "--replot"], keys=())
  path = args.out / f"{name}.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run `python -m rl_jax.experiments.tables.{name}` first.")
  evals = json.loads(path.read_text())["evals"]
  png = path.with_suffix(".png")
  plot_curves(png, curves_from_evals(evals), xlabel="RL step", ylabel="greedy accuracy", title=plot_title)
  print(f"wrote {png} from {path}")
  return {}
