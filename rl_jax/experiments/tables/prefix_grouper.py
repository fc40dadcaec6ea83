"""Table 3: Prefix Grouper — equivalence with the standard forward, and the saving in time and memory.

"Prefix Grouper: Efficient GRPO Training through Shared-Prefix Forward", arXiv 2506.05433: encoding
the group's shared prompt once gives the same log-probs and gradients as G copies of prompt +
completion, at a cost that grows with the completions instead of G × the prompt. For each prompt
length and group size: max |Δ| of the completion log-probs and of the parameter gradient between
`rl_jax.prefix_grouper.grouped_logprobs` and the standard `token_logprobs` (float32), forward+backward
wall time of both (median of repeats after compilation), and XLA's compiled memory for both
(`memory_analysis()`: temporaries + outputs + arguments of the jitted gradient).

Run:  python -m rl_jax.experiments.tables.prefix_grouper [--quick] [--seeds=0,1,2] [--out=results/tables]
      [--prompts=64,256,1024] [--groups=4,8,16] [--completion=32]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.experiments.benchmarks.timing import median_time
from rl_jax.experiments.tables import common
from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config
from rl_jax.prefix_grouper import grouped_logprobs

NAME = "prefix_grouper"
VOCAB = 512


def compiled_bytes(compiled) -> int:
  """Temporaries + outputs + arguments of a compiled function (-1 when the backend does not say)."""
  m = compiled.memory_analysis()
  if m is None:
    return -1
  return int(m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes)


def measure(seed: int, prompt_len: int, group: int, completion: int, repeats: int) -> dict:
  """One cell: random model and tokens from `seed`; ragged completions (the last half of rows shorter)."""
  cfg = tiny_config(VOCAB, max_seq_len=prompt_len + completion)
  params = init_params(cfg, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  prefix = jnp.asarray(rng.integers(1, VOCAB, prompt_len), jnp.int32)
  suffixes = jnp.asarray(rng.integers(1, VOCAB, (group, completion)), jnp.int32)
  lengths = rng.integers(completion // 2, completion + 1, group)
  smask = jnp.asarray(np.arange(completion)[None, :] < lengths[:, None], jnp.int32)
  tokens = jnp.concatenate([jnp.broadcast_to(prefix, (group, prompt_len)), suffixes], axis=1)
  attn = jnp.concatenate([jnp.ones((group, prompt_len), jnp.int32), smask], axis=1)
  m = smask.astype(jnp.float32)

  def grouped_loss(p):
    return jnp.sum(grouped_logprobs(p, cfg, prefix, suffixes, smask) * m)

  def standard_loss(p):
    return jnp.sum(token_logprobs(p, tokens, cfg, prompt_len=prompt_len, attn_mask=attn)[0] * m)

  grouped_lp = jax.jit(lambda p: grouped_logprobs(p, cfg, prefix, suffixes, smask) * m)
  standard_lp = jax.jit(lambda p: token_logprobs(p, tokens, cfg, prompt_len=prompt_len, attn_mask=attn)[0] * m)
  f_grp = jax.jit(jax.grad(grouped_loss)).lower(params).compile()       # compiled once: timed and measured
  f_std = jax.jit(jax.grad(standard_loss)).lower(params).compile()
  g_grp, g_std = f_grp(params), f_std(params)
  grad_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_grp), jax.tree.leaves(g_std)))
  grad_scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_std))
  return {"logp_diff": float(jnp.max(jnp.abs(grouped_lp(params) - standard_lp(params)))), "grad_diff": grad_diff,
          "grad_scale": grad_scale,
          "t_std": median_time(f_std, params, repeats=repeats), "t_grp": median_time(f_grp, params, repeats=repeats),
          "mem_std": compiled_bytes(f_std), "mem_grp": compiled_bytes(f_grp)}


def main(argv=()) -> dict:
  args = common.parse_args(argv, keys=("prompts", "groups", "completion"), doc=__doc__)
  report = common.Report(NAME, args, argv)
  prompts = [int(x) for x in str(common.extra_value(args, "prompts", "32" if args.quick else "64,256,1024")).split(",")]
  groups = [int(x) for x in str(common.extra_value(args, "groups", "4" if args.quick else "4,8,16")).split(",")]
  completion = common.extra_value(args, "completion", 16 if args.quick else 32)
  repeats = 2 if args.quick else 5
  cells = {}
  for lp in prompts:
    for g in groups:
      runs = [measure(seed, lp, g, completion, repeats) for seed in args.seeds]
      cells[(lp, g)] = runs
      r = runs[0]
      print(f"prompt {lp:5d} G {g:3d}: max|Δlogp| {max(x['logp_diff'] for x in runs):.2e} "
            f"max|Δgrad| {max(x['grad_diff'] for x in runs):.2e}  time {r['t_std'] * 1e3:.1f} → {r['t_grp'] * 1e3:.1f} ms  "
            f"memory {r['mem_std'] / 2**20:.1f} → {r['mem_grp'] / 2**20:.1f} MiB")
      sys.stdout.flush()
  header = ["prompt tokens", "G", "max abs Δ log-prob", "max abs Δ grad (rel.)", "standard fwd+bwd (ms)",
            "prefix-grouped (ms)", "speed-up", "standard memory (MiB)", "prefix-grouped memory (MiB)", "memory saving"]
  rows = []
  for (lp, g), runs in cells.items():
    ms = lambda k: common.mean_std([x[k] * 1e3 for x in runs], "{:.1f}")
    rel = max(x["grad_diff"] / max(x["grad_scale"], 1e-30) for x in runs)
    mem_s, mem_g = runs[0]["mem_std"], runs[0]["mem_grp"]
    rows.append([lp, g, f"{max(x['logp_diff'] for x in runs):.1e}", f"{rel:.1e}", ms("t_std"), ms("t_grp"),
                 common.mean_std([x["t_std"] / x["t_grp"] for x in runs], "{:.2f}x"),
                 f"{mem_s / 2**20:.1f}", f"{mem_g / 2**20:.1f}", f"{mem_s / max(mem_g, 1):.2f}x"])
  notes = [f"Tiny model (2 layers, d=64, vocab {VOCAB}), completions of {completion} tokens (ragged: lengths drawn "
           f"in [{completion // 2}, {completion}]), float32; seeds {list(args.seeds)} draw the parameters and tokens; "
           "Δ columns are the maximum over seeds (gradient relative to the largest gradient entry), times mean ± "
           f"std over seeds of the median of {repeats} runs, memory from XLA's compiled-memory analysis (same for every seed).",
           "The paper's claim — identical results, cost falling with G × prompt length — is checked by the Δ columns "
           "(float32 round-off) and the speed-up / memory columns."]
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for g in groups:
    axes[0].plot(prompts, [np.mean([x["t_std"] / x["t_grp"] for x in cells[(lp, g)]]) for lp in prompts], "o-", label=f"G={g}")
    axes[1].plot(prompts, [cells[(lp, g)][0]["mem_std"] / max(cells[(lp, g)][0]["mem_grp"], 1) for lp in prompts], "o-",
                 label=f"G={g}")
  for ax, title in zip(axes, ("fwd+bwd speed-up", "compiled memory saving")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("standard / prefix-grouped")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(report.path.with_suffix(".png"))
  plt.close(fig)
  report.write("Table 3 — Prefix Grouper", common.markdown_table(header, rows), notes,
               {"cells": {f"{lp}x{g}": runs for (lp, g), runs in cells.items()}})
  return cells


if __name__ == "__main__":
  main(sys.argv[1:])
