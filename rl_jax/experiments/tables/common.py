"""Shared pieces of the table runners: the arithmetic RL harness of tables 1, 2 and 4, and (imported from
`report.py`) the command line, mean ± std, markdown and plots of every table.

Every table module follows the same shape: `main(argv)` parses `--quick`, `--seeds=0,1,2`, `--out=DIR`,
runs its cells, writes `<out>/<name>.md` (the table with the command, machine, date and wall time that
made it), `<out>/<name>.png` and `<out>/<name>.json` (every per-seed number), and returns the rows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import advantages as advantages_lib
from rl_jax import loop
from rl_jax import objectives as objectives_lib
from rl_jax.advantages.stateful import init_reward_stats
from rl_jax.train import Rollouts, init_state, make_logprob_fn, make_rl_step, rl_iteration, rollout
from rl_jax.advantages.process import spo_tree_token_advantages
from rl_jax.mc_values import SPO_CHAIN_INTERVAL, SPO_CHAIN_SAMPLES, SPO_CHAIN_THRESHOLD, spo_chain_mc_values  # noqa: F401
from rl_jax.tree_rollout import first_width, impute_empty_rows, masked_group_stats, tree_rollout, tree_to_rollouts

from rl_jax.experiments.tables.report import (RESULTS, Args, Report, curve_style, extra_value, machine,  # noqa: F401
                                       markdown_table, mean_std, paired_difference, parse_args, plot_curves,
                                       warmup_note)

# ------------------------------------------------------------------------------ the arithmetic harness

@dataclasses.dataclass(frozen=True)
class Recipe:
  """One method in a table: objective (a name or your function) + advantage estimator + rollout kind.

  advantage: a name in rl_jax.advantages taking group rewards [P, G]; or "dcpo" (stateful SAS keyed by
  prompt), "tempo" (token-level, from the sampled group's prefix tree), "treepo" (needs rollout="tree").
  """
  name: str
  objective: Union[str, Callable] = "grpo"
  advantage: str = "grpo"
  objective_kw: tuple = ()          # (key, value) pairs added to the objective's keyword arguments
  rollout: str = "group"            # "group": G independent samples; "tree": TreePO tree rollouts

  @property
  def kw(self) -> dict:
    return dict(self.objective_kw)


@dataclasses.dataclass(frozen=True)
class Budget:
  """Same model, data and compute for every recipe of a table (1-digit addition, rl_jax.experiments.arithmetic_tiny)."""
  sft_steps: int = 50
  rl_steps: int = 60
  prompts: int = 32
  group: int = 8
  epochs: int = 2
  minibatches: int = 4
  lr: float = 5e-4
  eval_every: int = 5
  eval_size: int = 256
  target_accuracy: float = 0.6       # "steps to accuracy" threshold


QUICK_BUDGET = Budget(sft_steps=10, rl_steps=2, prompts=4, group=4, epochs=1, minibatches=2, eval_every=2,
                      eval_size=16)


@functools.lru_cache(maxsize=8)
def _logprob_fn(model_cfg, prompt_len: int):
  """One jitted log-prob function per model shape, shared by every recipe (compiled once)."""
  return make_logprob_fn(model_cfg, prompt_len=prompt_len)


def _base_config(seed: int, budget: Budget):
  from rl_jax.experiments import arithmetic_tiny
  return arithmetic_tiny.Config(seed=seed, sft_steps=budget.sft_steps, rl_steps=budget.rl_steps,
                                prompts_per_step=budget.prompts, group_size=budget.group, epochs=budget.epochs,
                                minibatches=budget.minibatches, lr=budget.lr, eval_every=budget.eval_every,
                                eval_size=budget.eval_size, checkpoint_every=0, progress_bar=False)


@functools.lru_cache(maxsize=8)
def warm_start(seed: int, budget: Budget):
  """The post-warm-up parameters for a seed (shared by every recipe of that seed) and their accuracy."""
  from rl_jax.experiments import arithmetic_tiny
  cfg = _base_config(seed, budget)
  task, model_cfg = arithmetic_tiny.build(cfg)
  state = arithmetic_tiny.warm_up(cfg, task, model_cfg)
  return state, arithmetic_tiny.evaluate(state.params, model_cfg, task, budget.eval_size)


def objective_kwargs(recipe: Recipe, cfg) -> dict:
  """The config's keywords for a named objective (β, group size, ...) plus the recipe's own."""
  if callable(recipe.objective):
    return recipe.kw
  kw = loop.objective_kwargs(dataclasses.replace(cfg, objective=recipe.objective), 8)
  kw.update(recipe.kw)
  return kw


def run_recipe(recipe: Recipe, seed: int, budget: Budget) -> dict:
  """Trains the warm-started model of `seed` with `recipe` for budget.rl_steps RL steps.

  Returns {"steps": [...per-step metrics...], "evals": [(step, accuracy), ...], "wall_s": ...}.
  Rollout prompts per step are the same for every recipe of a seed (data position = step).
  """
  from rl_jax.experiments import arithmetic_tiny
  cfg = _base_config(seed, budget)
  task, model_cfg = arithmetic_tiny.build(cfg)
  warm, acc0 = warm_start(seed, budget)
  t0 = time.perf_counter()
  opt = loop.rl_optimizer(cfg.lr)
  state = init_state(warm.params, opt, jax.random.fold_in(jax.random.PRNGKey(seed), 3))
  objective = recipe.objective if callable(recipe.objective) else objectives_lib.get(recipe.objective)
  rl_step = make_rl_step(model_cfg, opt, objective, objective_kwargs(recipe, cfg), prompt_len=task.prompt_len)
  logprob_fn = _logprob_fn(model_cfg, task.prompt_len)
  dcpo_ids: dict = {}
  dcpo_state = init_reward_stats(10 ** (2 * task.digits) * len(task.ops))
  evals, steps = [(0, acc0)], []
  for step in range(budget.rl_steps):
    problems = task.problems(budget.prompts, stream=2, index=step)
    p_ids, p_mask = task.encode_prompts([p for p, _ in problems])
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1000 + step)
    valid = None
    if recipe.rollout == "tree":
      depth = task.answer_len
      tr = tree_rollout(state.params, model_cfg, jnp.asarray(p_ids), jnp.asarray(p_mask), key,
                        group_size=budget.group, segment_len=1, max_depth=depth, first_width=first_width(budget.group, depth),
                        branch_factor=2, branch_by="entropy", temperature=1.0, stop_tokens=(task.vocab.EOS,))
      ro, valid = tree_to_rollouts(p_ids, p_mask, tr)
      paths = tr.paths
    else:
      ro = rollout(state.params, model_cfg, p_ids, p_mask, key, group_size=budget.group,
                   max_new_tokens=task.answer_len, temperature=1.0, stop_tokens=(task.vocab.EOS,))
    answers = np.repeat([a for _, a in problems], budget.group)
    rewards = np.array([task.reward(c, a) for c, a in zip(ro.completion, answers)], np.float32)
    rewards = rewards.reshape(budget.prompts, budget.group)
    if valid is not None:
      rewards = impute_empty_rows(rewards, valid.reshape(rewards.shape))
    mc = None
    if recipe.advantage == "spo_chain":
      mc = spo_chain_mc_values(state.params, model_cfg, p_ids, p_mask, ro,
                               lambda ids, row: task.reward(ids, answers[row]), jax.random.fold_in(key, 7),
                               group=budget.group, stop_tokens=(task.vocab.EOS,))
    adv_fn, extra = advantage_for(recipe, ro, rewards, problems, valid, paths if recipe.rollout == "tree" else None,
                                  dcpo_ids, dcpo_state, mc=mc)
    if recipe.advantage == "dcpo":
      dcpo_state = extra.pop("dcpo_state")
    if "loss_mask" in extra:   # SPO-chain's probability mask drops confident tokens from the loss
      ro = ro._replace(completion_mask=extra.pop("loss_mask"))
    keep_groups = loop.needs_groups(objective)
    state, metrics = rl_iteration(state, rl_step, logprob_fn, ro, rewards, adv_fn, epochs=budget.epochs,
                                  minibatches=budget.minibatches, valid_rows=valid, keep_groups=keep_groups)
    reward = rewards.mean() if valid is None else rewards.reshape(-1)[valid].mean()
    row = dict(metrics, reward=float(reward), **extra)
    steps.append(row)
    if (step + 1) % budget.eval_every == 0 or step + 1 == budget.rl_steps:
      evals.append((step + 1, arithmetic_tiny.evaluate(state.params, model_cfg, task, budget.eval_size)))
  return {"steps": steps, "evals": evals, "wall_s": time.perf_counter() - t0}


TREE_ADVANTAGES = ("grpo", "tempo", "treepo", "spo_tree")


def advantage_for(recipe: Recipe, ro: Rollouts, rewards: np.ndarray, problems, valid, paths, dcpo_ids, dcpo_state,
                  mc=None):
  """(advantages_fn for rl_iteration, extra metrics) for the recipe's estimator on this step's rollouts.

  extra["tree_term_frac"]: share of valid completion tokens where the tree / prefix term is non-zero
  (TEMPO: V(s_{j+1}) − V(s_j); TreePO: the subtree-averaged centred reward differs from R − mean;
  SPO-tree: the kept edge advantage; SPO-chain: the segment advantage V(c_k) − V(c_{k−1})).
  `mc`: SPO-chain's Monte-Carlo values (`spo_chain_mc_values`); then extra["loss_mask"] [P·G, T] is the
  loss mask to train with.
  """
  p, g = rewards.shape
  msk = ro.completion_mask.reshape(p, g, -1)
  tok = ro.completion.reshape(p, g, -1)
  extra = {}
  name = recipe.advantage
  r = jnp.asarray(rewards)
  if name == "dcpo":
    ids = np.array([dcpo_ids.setdefault(q, len(dcpo_ids)) for q, _ in problems])
    adv, extra["dcpo_state"] = advantages_lib.dcpo(r, jnp.asarray(ids), dcpo_state)
    return (lambda _, a=adv: a), extra
  if recipe.rollout == "tree":
    if name not in TREE_ADVANTAGES:
      raise ValueError(f"On tree rollouts the table supports {TREE_ADVANTAGES}, got {name!r}.")
    v = valid.reshape(p, g)
    mu, sd = masked_group_stats(rewards, v)
    if name == "grpo":
      adv = (rewards - mu) / (sd + 1e-6) * v
    elif name == "tempo":
      raw = np.asarray(advantages_lib.tempo(jnp.asarray(tok), jnp.asarray(msk), r, norm_adv_by_std=False))
      td = raw - (rewards - mu)[..., None] * (msk > 0)
      extra["tree_term_frac"] = _nonzero_frac(td, msk)
      adv = raw / (sd[..., None] + 1e-6)
    elif name == "treepo":
      raw = np.asarray(advantages_lib.treepo(r, paths, jnp.asarray(msk), whiten=False))
      extra["tree_term_frac"] = _nonzero_frac(raw - (rewards - mu)[..., None] * (msk > 0), msk)
      adv = advantages_lib.treepo(r, paths, jnp.asarray(msk))
    else:
      adv, keep = spo_tree_token_advantages(rewards, np.asarray(paths), msk)
      extra["tree_term_frac"] = _nonzero_frac(adv * keep, msk)
      adv = adv * keep
    return (lambda _, a=adv: a), extra
  if name == "tempo":
    adv = advantages_lib.tempo(jnp.asarray(tok), jnp.asarray(msk), r)
    raw = np.asarray(advantages_lib.tempo(jnp.asarray(tok), jnp.asarray(msk), r, norm_adv_by_std=False))
    extra["tree_term_frac"] = _nonzero_frac(raw - np.asarray(r - r.mean(1, keepdims=True))[..., None] * (msk > 0), msk)
    return (lambda _, a=adv: a), extra
  if name in ("treepo", "spo_tree"):
    raise ValueError(f"{name} needs rollout='tree' (it reads the tree paths).")
  if name == "spo_chain":
    if mc is None:
      raise ValueError("spo_chain needs its Monte-Carlo values (spo_chain_mc_values).")
    values, prompt_values, probs = mc
    raw, loss_mask = advantages_lib.spo_chain(probs, jnp.asarray(msk), values, r, prompt_values=prompt_values,
                                              interval=SPO_CHAIN_INTERVAL, threshold=SPO_CHAIN_THRESHOLD)
    extra["tree_term_frac"] = _nonzero_frac(raw, msk)
    # official code: whiten over mask & (p < threshold), or over the mask when that is empty
    wm = jnp.where(jnp.sum(loss_mask) > 0, loss_mask, jnp.asarray(msk, jnp.float32))
    adv = advantages_lib.masked_whiten(raw, wm) * loss_mask
    extra["loss_mask"] = np.asarray(loss_mask, np.float32).reshape(p * g, -1)
    return (lambda _, a=adv: a), extra
  return advantages_lib.get(name), extra




def _nonzero_frac(x, mask) -> float:
  m = np.asarray(mask) > 0
  return float(((np.abs(np.asarray(x)) > 1e-6) & m).sum() / max(m.sum(), 1))


def summarize(run: dict, budget: Budget) -> dict:
  """Per-run numbers for the tables: final accuracy, means over RL steps, end-of-run entropy, steps to target."""
  steps, evals = run["steps"], run["evals"]
  reach = [s for s, a in evals if a >= budget.target_accuracy]
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


def run_grid(recipes: Sequence[Recipe], seeds: Sequence[int], budget: Budget, *, log=print) -> dict:
  """name -> {"runs": [run per seed], "summary": [summary per seed]}."""
  out = {}
  for recipe in recipes:
    out[recipe.name] = {"runs": [], "summary": []}
  for seed in seeds:
    for recipe in recipes:
      run = run_recipe(recipe, seed, budget)
      s = summarize(run, budget)
      out[recipe.name]["runs"].append(run)
      out[recipe.name]["summary"].append(s)
      log(f"seed {seed} {recipe.name:>12s}: accuracy {s['accuracy']:.3f}  clip {s['clip_frac']:.4f}  "
          f"nonzero-adv {s['nonzero_adv_frac']:.3f}  entropy {s['entropy_end']:.3f}  ({s['wall_s']:.0f} s)")
      sys.stdout.flush()
  return out


def run_table(name: str, argv, recipes: Sequence[Recipe], quick: Sequence[str] = (), doc: str = ""):
  """The shared start of tables 1, 2 and 4: arguments, report, budget, the recipes to run (`quick` names
  the subset for --quick; empty = all) and their grid over the seeds. Returns (args, report, budget,
  recipes, grid, summaries name -> per-seed).

  --retable: the grid is read back from `<out>/<name>.json` (the per-seed numbers and curves of an earlier
  run with the same budget, seeds and rows) instead of trained, so a new table layout or note applies to a
  finished run; the report names the run the numbers come from."""
  retable = "--retable" in argv
  args = parse_args([a for a in argv if a != "--retable"], keys=(), doc=doc)
  budget = QUICK_BUDGET if args.quick else Budget()
  recipes = [r for r in recipes if not (args.quick and quick) or r.name in quick]
  source = load_grid(args.out / f"{name}.json", recipes, args.seeds, budget) if retable else None
  report = Report(name, args, argv)
  if source is not None:
    grid, report.source = source
  else:
    grid = run_grid(recipes, args.seeds, budget)
  return args, report, budget, recipes, grid, {n: cell["summary"] for n, cell in grid.items()}


def load_grid(path: pathlib.Path, recipes: Sequence[Recipe], seeds: Sequence[int], budget: Budget):
  """(grid, source) from a grid table's json: the same budget, the same seeds and every recipe's row are
  required; source = the command, machine, date and wall time of the run that measured them."""
  if not path.exists():
    raise SystemExit(f"--retable: {path} not found; run the table without --retable first.")
  raw = json.loads(path.read_text())
  if raw.get("budget") != dataclasses.asdict(budget):
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
                      budget: Budget) -> dict:
  """Plots the accuracy curves of a run_grid result and writes the table; returns name -> per-seed summaries."""
  s = {name: cell["summary"] for name, cell in grid.items()}
  plot_curves(report.path.with_suffix(".png"), accuracy_curves(grid), xlabel="RL step", ylabel="greedy accuracy",
              title=plot_title)
  report.write(title, markdown_table(header, rows), notes,
               {"summary": s, "evals": {k: [r["evals"] for r in c["runs"]] for k, c in grid.items()},
                "budget": budget.__dict__})
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
