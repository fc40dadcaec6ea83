"""Table 2: credit assignment — sequence-level GRPO vs prefix-tree credit (TEMPO, TreePO, SPO-tree, SPO-chain).

All methods use the GRPO loss and the same budget; they differ in the rollouts (G independent samples,
or TreePO tree rollouts that fork at the most uncertain open nodes) and in how the outcome reward is
spread over tokens:
  grpo      one advantage per response, (R − mean)/std of the group;
  tempo     GRPO plus the prefix-tree TD term V(s_{j+1}) − V(s_j) (arXiv 2509.18314);
  treepo    the centred reward averaged over every subtree the response belongs to (arXiv 2508.17445);
  spo_tree  edge advantages V(child) − V(parent) of the rollout tree (SPO, arXiv 2505.23564);
  spo_chain segment advantages V(c_k) − V(c_{k−1}) between low-probability cut points, the values
            estimated by Monte-Carlo continuations from each cut (SPO, arXiv 2505.23564; official
            defaults: every 5th token with p < 0.9, 9 samples per cut, confident tokens masked out of the
            loss, advantages whitened over the remaining tokens).
Measured: final accuracy, steps to the target accuracy, and the share of tokens where the tree term
is non-zero (where the method's credit differs from the response's sequence-level signal).

The task is 1-digit addition, where the answer tokens branch (a wrong first digit, or a right one
followed by a wrong second); it has one right answer per problem, not several right solutions, so
the tree terms here reward right prefixes rather than choose between solutions.
SPO-chain's value rollouts are extra sampling the other rows do not pay for; the table reports it.

Run:  python -m rl_jax.experiments.tables.credit_assignment [--quick] [--seeds=0,1,2] [--out=results/tables]
      python -m rl_jax.experiments.tables.credit_assignment --replot   # redraw the PNG from the stored json
      python -m rl_jax.experiments.tables.credit_assignment --retable [--seeds=...]   # table + PNG from the stored json
"""

from __future__ import annotations

import sys

from rl_jax.experiments.tables import common

NAME = "credit_assignment"

RECIPES = (
    common.Recipe("grpo", "grpo", "grpo"),
    common.Recipe("tempo", "grpo", "tempo"),
    common.Recipe("grpo (tree rollouts)", "grpo", "grpo", rollout="tree"),
    common.Recipe("tempo (tree rollouts)", "grpo", "tempo", rollout="tree"),
    common.Recipe("treepo", "grpo", "treepo", rollout="tree"),
    common.Recipe("spo_tree", "grpo", "spo_tree", rollout="tree"),
    common.Recipe("spo_chain", "grpo", "spo_chain"),
)
QUICK = ("grpo", "tempo", "treepo", "spo_tree", "spo_chain")


PLOT_TITLE = "Credit assignment, 1-digit addition (mean ± std over seeds)"


def main(argv=()) -> dict:
  if "--replot" in argv:   # redraw the figure from the stored json, no training
    return common.replot_grid(NAME, PLOT_TITLE, argv)
  args, report, budget, recipes, grid, s = common.run_table(NAME, argv, RECIPES, QUICK, doc=__doc__,
                                                            baseline="grpo")
  header = ["method", "rollouts", "advantage", "final accuracy", "Δ vs grpo (paired)",
            f"steps to {common.TARGET_ACCURACY:.2f}",
            "tokens with a tree term", "non-zero-adv tokens", "entropy (end)", "wall s / run"]
  rows = []
  for r in recipes:
    v = s[r.name]
    col = lambda k, f="{:.3f}": common.mean_std([x[k] for x in v], f)
    tree = col("tree_term_frac") if r.advantage != "grpo" else "0 (none)"
    rows.append([r.name, r.rollout, r.advantage, col("accuracy"), common.paired_difference(s, r.name, "grpo"),
                 col("steps_to_target", "{:.0f}"), tree,
                 col("nonzero_adv_frac"), col("entropy_end"), col("wall_s", "{:.0f}")])
  acc0 = common.warmup_accuracies(grid)
  notes = [f"Task: 1-digit addition, 2-layer d=64 transformer, {budget.sft_steps} supervised warm-up steps "
           f"(greedy accuracy after warm-up {common.mean_std(acc0)}), then {budget.rl_steps} RL steps × "
           f"{budget.prompts_per_step} prompts × {budget.group_size} samples (tree rollouts: one-token segments, first width "
           f"{common.first_width(budget.group_size, 3)}, fork factor 2, forking at the highest-entropy open nodes), "
           f"GRPO loss, {budget.epochs} epochs × {budget.minibatches} mini-batches; mean ± std over seeds "
           f"{list(args.seeds)}.",
           "Δ vs grpo (paired): final accuracy minus GRPO's (group rollouts) on the same seed, mean ± std over "
           "seeds. " + common.warmup_note(acc0, common.TARGET_ACCURACY),
           "On tree rollouts a prompt whose branches all end early has fewer than G leaves; the empty rows are "
           "left out of the loss and of every group statistic.",
           f"spo_chain: cut points every {common.SPO_CHAIN_INTERVAL}th token with p < {common.SPO_CHAIN_THRESHOLD} "
           f"(the prompt state included), {common.SPO_CHAIN_SAMPLES} Monte-Carlo continuations per cut from the "
           "current policy; tokens with p > 0.9 are out of the loss. Its tree-term column is the share of tokens "
           "with a non-zero segment advantage; its wall time includes the value rollouts (the last column: seconds of RL training per run)."]
  return common.write_grid_report(report, "Table 2 — credit assignment", PLOT_TITLE, header, rows, notes, grid,
                                  budget)


if __name__ == "__main__":
  main(sys.argv[1:])
