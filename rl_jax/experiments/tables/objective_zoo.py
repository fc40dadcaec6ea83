"""Table 1: the objective zoo on 1-digit addition (same model, data and budget for every objective).

Each objective starts from the same supervised warm-up of its seed, sees the same prompts in the same
order and gets the same RL budget (steps × prompts × samples, epochs, mini-batches, Adam lr). Measured
per run: final greedy accuracy, RL steps to reach the target accuracy, share of completion tokens whose
update was clipped, share of tokens with a non-zero advantage, share of flat groups (all rewards equal)
that still get a signal, the spread (std) of the token ratio π/π_old during the updates, and the mean
token entropy of the last step's rollouts.

Claims checked (printed under the table with the measured numbers):
  DCPO clips an order of magnitude fewer tokens than GRPO/DAPO and has more non-zero advantages
  (arXiv 2509.02333); NGRPO gives a signal on all-wrong groups (arXiv 2509.18851); GSPO / SAPO keep the
  update stable where token-level GRPO's ratio spread is larger (arXiv 2507.18071, 2511.20347); OPMD, AsymRE,
  DisCO, STEER, LLDS and SPINE each report a gain over GRPO-style training: their paired difference to GRPO
  in standard errors, and whether they end below the warm-up (`gain_claims`).

Run:  python -m rl_jax.experiments.tables.objective_zoo [--quick] [--seeds=0,1,2] [--out=results/tables]
      python -m rl_jax.experiments.tables.objective_zoo --replot   # redraw the PNG from the stored json
      python -m rl_jax.experiments.tables.objective_zoo --retable [--seeds=...]   # table + PNG from the stored json
      python -m rl_jax.experiments.tables.objective_zoo --rows=grpo,opmd,disco   # only these rows (grpo: the baseline)
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np

from rl_jax.experiments.tables import common
from rl_jax import objectives

NAME = "objective_zoo"
BASELINE = "grpo"   # the row the paired column subtracts


def sspo_one_segment(logp, old_logp, advantages, mask, *, entropy, ref_logp=None):
  """SSPO with each response as one segment: the arithmetic vocabulary has no sentence delimiters."""
  return objectives.sspo(logp, old_logp, advantages, mask, segment_ids=jnp.zeros(mask.shape, jnp.int32),
                         entropy=entropy, ref_logp=ref_logp)


RECIPES = (
    common.Recipe("grpo", "grpo", "grpo"),
    common.Recipe("dr_grpo", "dr_grpo", "dr_grpo"),
    common.Recipe("dapo", "dapo", "grpo"),
    common.Recipe("gspo", "gspo", "grpo"),
    common.Recipe("sapo", "sapo", "grpo"),
    common.Recipe("dhpo", "dhpo", "grpo"),
    common.Recipe("sspo", sspo_one_segment, "grpo"),
    common.Recipe("dcpo", "dcpo", "dcpo"),
    common.Recipe("minpro", "minpro", "grpo"),
    common.Recipe("ngrpo", "ngrpo", "ngrpo"),
    common.Recipe("cispo", "cispo", "grpo"),
    common.Recipe("gtpo", "gtpo", "dr_grpo"),     # GTPO shapes the unnormalised R − mean (its docstring)
    common.Recipe("hapo", "hapo", "grpo"),
    common.Recipe("opmd", "opmd", "opmd"),
    common.Recipe("asymre", "opmd", "asymre", objective_kw=(("tau", 0.0),)),   # plain REINFORCE, shifted baseline
    common.Recipe("disco", "disco", "grpo"),      # DisCO reads only the advantage's sign (positive vs negative)
    common.Recipe("steer", "steer", "grpo"),
    common.Recipe("llds", "llds", "grpo"),
    common.Recipe("spine", "spine", "grpo"),      # with the verifier's reward (the paper's is a majority vote)
)
QUICK = ("grpo", "dcpo", "ngrpo")


def describe(r: common.Recipe) -> str:
  obj = r.objective if isinstance(r.objective, str) else r.objective.__name__
  return f"{obj} / {r.advantage}"


def claims(s: dict) -> list[str]:
  """The papers' claims, each with the measured numbers and whether the table agrees."""
  out = []
  mean = lambda name, key: float(np.nanmean([x[key] for x in s[name]])) if name in s else float("nan")
  if {"dcpo", "grpo"} <= s.keys():
    ref = max(mean("grpo", "clip_frac"), mean("dapo", "clip_frac") if "dapo" in s else 0.0)
    d = mean("dcpo", "clip_frac")
    if ref == 0:
      out.append(f"DCPO clips {d:.4f} of tokens and GRPO/DAPO clip none: the order-of-magnitude claim is not "
                 f"testable at this budget.")
    else:
      ratio = ref / d if d > 0 else float("inf")
      out.append(f"DCPO clips {d:.4f} of tokens vs {ref:.4f} for the larger of GRPO/DAPO ({ratio:.1f}x fewer): "
                 f"{'agrees with' if ratio >= 10 else 'does NOT reach'} the paper's order-of-magnitude claim.")
    nz_d, nz_g = mean("dcpo", "nonzero_adv_frac"), mean("grpo", "nonzero_adv_frac")
    out.append(f"Non-zero-advantage tokens: DCPO {nz_d:.3f} vs GRPO {nz_g:.3f}: "
               f"{'agrees' if nz_d > nz_g else 'disagrees'} (DCPO's SAS advantage keeps flat groups' history).")
  if "ngrpo" in s:
    f_n, f_g = mean("ngrpo", "flat_group_signal"), mean("grpo", "flat_group_signal") if "grpo" in s else float("nan")
    out.append(f"Flat groups with a signal: NGRPO {f_n:.3f} vs GRPO {f_g:.3f} (NGRPO's virtual max reward gives "
               f"all-wrong groups a negative advantage; all-right groups stay at 0, so the share is the "
               f"all-wrong share of flat groups): {'agrees' if f_n > 0 and not f_g > 0 else 'disagrees'}.")
  if "grpo" in s:
    g = mean("grpo", "token_ratio_std")
    for name in ("gspo", "sapo"):
      if name in s:
        v = mean(name, "token_ratio_std")
        out.append(f"Token ratio spread (std of π/π_old over the updates): {name.upper()} {v:.4f} vs GRPO {g:.4f}: "
                   f"{'agrees' if v < g else 'disagrees'} with 'more stable than token-level GRPO'.")
  return out


# Rows whose papers each report a gain over GRPO-style training; the table states where each one lands.
GAIN_CLAIMS = ("opmd", "asymre", "disco", "steer", "llds", "spine")


def gain_claims(s: dict, warmup: list) -> list[str]:
  """For each GAIN_CLAIMS row: its paired difference to GRPO in standard errors (std / √n over seeds), read
  as above (≥ 2), within noise or below (≤ −2), and whether it ends below the seeds' warm-up accuracy."""
  out = []
  if BASELINE not in s:
    return out
  for name in (n for n in GAIN_CLAIMS if n in s):
    d = np.array([a["accuracy"] - b["accuracy"] for a, b in zip(s[name], s[BASELINE])])
    se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
    z = d.mean() / se if se > 1e-12 else np.sign(d.mean()) * np.inf   # no spread: every seed agrees
    verdict = "above GRPO" if z >= 2 else "below GRPO" if z <= -2 else "within noise of GRPO"
    line = (f"{name.upper()} vs GRPO (paired, {d.size} seeds): {d.mean():+.3f} ± {se:.3f} (standard error), "
            f"{z:+.1f} s.e.: {verdict}")
    final = float(np.mean([x["accuracy"] for x in s[name]]))
    if warmup and final < float(np.mean(warmup)):
      line += f"; it ends below the warm-up ({final:.3f} vs {float(np.mean(warmup)):.3f})"
    out.append(line + ".")
  return out


PLOT_TITLE = "Objective zoo, 1-digit addition (mean ± std over seeds)"


def main(argv=()) -> dict:
  if "--replot" in argv:   # redraw the figure from the stored json, no training
    return common.replot_grid(NAME, PLOT_TITLE, argv)
  args, report, budget, recipes, grid, s = common.run_table(NAME, argv, RECIPES, QUICK, doc=__doc__,
                                                            baseline=BASELINE)
  header = ["objective", "objective / advantage", "final accuracy", "Δ vs grpo (paired)",
            f"steps to {common.TARGET_ACCURACY:.2f}",
            "clipped tokens", "non-zero-adv tokens", "flat groups with signal", "token ratio std", "entropy (end)"]
  rows = []
  for r in recipes:
    v = s[r.name]
    col = lambda k, f="{:.3f}": common.mean_std([x[k] for x in v], f)
    rows.append([r.name, describe(r), col("accuracy"), common.paired_difference(s, r.name, BASELINE),
                 col("steps_to_target", "{:.0f}"), col("clip_frac", "{:.4f}"),
                 col("nonzero_adv_frac"), col("flat_group_signal"), col("token_ratio_std", "{:.4f}"),
                 col("entropy_end")])
  acc0 = common.warmup_accuracies(grid)
  notes = [f"Task: 1-digit addition, 2-layer d=64 transformer, {budget.sft_steps} supervised warm-up steps "
           f"(greedy accuracy after warm-up {common.mean_std(acc0)}), then {budget.rl_steps} RL steps × "
           f"{budget.prompts_per_step} prompts × {budget.group_size} samples, {budget.epochs} epochs × {budget.minibatches} "
           f"mini-batches, Adam lr {budget.lr}; greedy accuracy on {budget.eval_size} held-out problems every "
           f"{budget.eval_every} steps; mean ± std over seeds {list(args.seeds)}.",
           "Every objective runs with its own defaults (rl_jax.objectives) and the advantage its paper pairs it with "
           "(column 2). "
           "DAPO here is its loss (clip-higher, token-mean) without dynamic sampling, so that every method "
           "gets the same rollouts; SSPO treats each response as one segment (no sentence delimiters).",
           "steps-to-target is n/a when a run never reached it (n = runs that did). " + common.warmup_note(acc0, common.TARGET_ACCURACY),
           "Δ vs grpo (paired): final accuracy minus GRPO's on the same seed (same warm-up, same prompts), mean ± "
           "std over seeds; it leaves out the spread between warm-ups that the final-accuracy column carries."]
  notes += claims(s) + gain_claims(s, acc0)
  return common.write_grid_report(report, "Table 1 — objective zoo", PLOT_TITLE, header, rows, notes, grid,
                                  budget)


if __name__ == "__main__":
  main(sys.argv[1:])
