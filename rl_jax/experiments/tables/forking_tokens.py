"""Table 4: 80/20 forking tokens — train on the top-20% entropy tokens vs all tokens vs the bottom 80%.

"Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning",
arXiv 2506.01939: keeping the policy gradient only on the 20% highest-entropy tokens of each mini-batch
matches or beats training on all tokens, while training on the other 80% alone falls behind. The loss
is DAPO's (the paper's base), with `rl_jax.advantages.forking_tokens` as token weights and the
denominator over all valid tokens (the paper's form). Same warm-up, prompts and budget for every row.

Run:  python -m rl_jax.experiments.tables.forking_tokens [--quick] [--seeds=0,1,2] [--out=results/tables]
      python -m rl_jax.experiments.tables.forking_tokens --replot   # redraw the PNG from the stored json
      python -m rl_jax.experiments.tables.forking_tokens --retable [--seeds=...]   # table + PNG from the stored json
"""

from __future__ import annotations

import sys

import jax

from rl_jax.experiments.tables import common
from rl_jax import advantages, objectives

NAME = "forking_tokens"
RHO = 0.2


def _dapo_on(keep):
  def loss(logp, old_logp, adv, mask, *, entropy, ref_logp=None):
    w = advantages.forking_tokens(jax.lax.stop_gradient(entropy), mask, rho=RHO, keep=keep)
    return objectives.dapo(logp, old_logp, adv, mask, ref_logp=ref_logp, token_weights=w)
  loss.__name__ = f"dapo_{keep}"
  return loss


RECIPES = (
    common.Recipe("top 20% (forking)", _dapo_on("top")),
    common.Recipe("all tokens", _dapo_on("all")),
    common.Recipe("bottom 80%", _dapo_on("bottom")),
)


PLOT_TITLE = "80/20 forking tokens, 1-digit addition (mean ± std over seeds)"


def main(argv=()) -> dict:
  if "--replot" in argv:   # redraw the figure from the stored json, no training
    return common.replot_grid(NAME, PLOT_TITLE, argv)
  args, report, budget, recipes, grid, s = common.run_table(NAME, argv, RECIPES, doc=__doc__,
                                                            baseline="all tokens")
  header = ["tokens trained", "final accuracy", "Δ vs all tokens (paired)", "best accuracy",
            f"steps to {common.TARGET_ACCURACY:.2f}",
            "entropy (end)", "clipped tokens"]
  rows = []
  for r in recipes:
    v = s[r.name]
    col = lambda k, f="{:.3f}": common.mean_std([x[k] for x in v], f)
    rows.append([r.name, col("accuracy"), common.paired_difference(s, r.name, "all tokens"), col("best_accuracy"),
                 col("steps_to_target", "{:.0f}"), col("entropy_end"),
                 col("clip_frac", "{:.4f}")])
  mean = lambda n: sum(x["accuracy"] for x in s[n]) / len(s[n])
  top, all_, bottom = (mean(r.name) for r in recipes)
  acc0 = common.warmup_accuracies(grid)
  notes = [f"Task: 1-digit addition (answers of 2-3 tokens, so 20% of a mini-batch's tokens is mostly the first "
           f"answer digit), {budget.sft_steps} warm-up steps (accuracy {common.mean_std(acc0)}), "
           f"{budget.rl_steps} RL steps × {budget.prompts_per_step} prompts × {budget.group_size} samples, DAPO loss, "
           f"ρ = {RHO} per mini-batch; mean ± std over seeds {list(args.seeds)}.",
           "Δ vs all tokens (paired): final accuracy minus the all-tokens row's on the same seed, mean ± std over "
           "seeds. " + common.warmup_note(acc0, common.TARGET_ACCURACY),
           f"Claim 'top 20% ≥ all tokens > bottom 80%': measured final accuracy {top:.3f} / {all_:.3f} / {bottom:.3f} — "
           + ("agrees." if top >= all_ - 1e-9 and all_ > bottom else "does NOT hold here.")]
  return common.write_grid_report(report, "Table 4 — 80/20 forking tokens", PLOT_TITLE, header, rows, notes, grid,
                                  budget)


if __name__ == "__main__":
  main(sys.argv[1:])
