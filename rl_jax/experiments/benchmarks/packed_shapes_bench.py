"""How many packed shapes a run compiles, against the positions it computes (host only, no model).

Every new (R, S, N) of the packed rows (rl_jax.packing) compiles the train step or the log-prob forward
again. This draws GSM8K-like batches (8 prompts of 80–160 real tokens, padded to 160; 4 completions each,
log-normal around 170 tokens, capped at 192), packs each whole batch (the π_old / reference forward) and its 2
mini-batches of whole groups (the train step) as the loop does, and counts the distinct shapes over `--steps`
steps and the positions computed per distinct real token, side by side: the loop's packing (the rounding in use,
reusing a layout the run already compiled when barely larger: `rl_jax.packing.choose_layout`'s known), the same
rounding with every step's layout chosen afresh, and every size at 1/16 of an octave (the earlier rounding).

  python -m rl_jax.experiments.benchmarks.packed_shapes_bench [--steps=100] [--seed=0]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np

from rl_jax import packing

PROMPT, NEW, GROUP, PROMPTS, MINI_BATCHES = 160, 192, 4, 8, 2


def draw_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """tokens, attn_mask [PROMPTS·GROUP, PROMPT + NEW]: left-padded prompts, right-padded completions."""
  tokens = np.zeros((PROMPTS * GROUP, PROMPT + NEW), np.int32)
  for q in range(PROMPTS):
    prompt = rng.integers(1, 1000, size=int(rng.integers(80, PROMPT + 1)))
    for j in range(GROUP):
      n = int(min(NEW, max(8, rng.lognormal(np.log(170), 0.5))))
      row = tokens[q * GROUP + j]
      row[PROMPT - len(prompt):PROMPT] = prompt
      row[PROMPT:PROMPT + n] = rng.integers(1, 1000, size=n)
  return tokens, (tokens > 0).astype(np.int32)


@contextlib.contextmanager
def rounding(row: int, target: int):
  """rl_jax.packing's rounding of (S, N) set for the block."""
  saved = packing.ROW_FINE, packing.TARGET_FINE
  packing.ROW_FINE, packing.TARGET_FINE = row, target
  try:
    yield
  finally:
    packing.ROW_FINE, packing.TARGET_FINE = saved


def shape_of(rows: packing.Packed) -> tuple:
  return rows.tokens.shape, rows.targets.shape, rows.prompt_window, rows.completion_window


def count(steps: int, seed: int, reuse: bool = True) -> dict:
  """Distinct log-prob and train-step shapes over `steps` steps, and train-step positions / distinct tokens;
  `reuse`: every packing may take a layout packed before (one set for the run, as rl_jax.loop_run.Run.pack)."""
  rng, logprob, train, ratio, known = np.random.default_rng(seed), set(), set(), [], set()
  width = packing.span_limit(PROMPT + NEW)             # as rl_jax.loop_run.Run.pack

  def pack(tokens, attn):
    packed = packing.pack_groups(tokens, attn, PROMPT, max_span=width, known=known if reuse else ())
    known.add(packed.tokens.shape)
    return packed

  for _ in range(steps):
    tokens, attn = draw_batch(rng)
    logprob.add(shape_of(pack(tokens, attn)))
    for m in range(MINI_BATCHES):
      rows = np.arange(len(tokens)).reshape(PROMPTS, GROUP)[m::MINI_BATCHES].ravel()
      packed = pack(tokens[rows], attn[rows])
      train.add(shape_of(packed))
      stats = packing.layout_stats(packed, tokens[rows], attn[rows])
      ratio.append(stats["packed_positions"] / stats["distinct_tokens"])
  return {"logprob_shapes": len(logprob), "train_shapes": len(train), "positions_per_distinct": float(np.mean(ratio)),
          "worst": float(np.max(ratio))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  now = packing.ROW_FINE, packing.TARGET_FINE
  print(f"{args.steps} steps of {PROMPTS} groups × {GROUP}, {MINI_BATCHES} mini-batches (seed {args.seed})\n")
  print("| rounding (S, N: 1/k of an octave) | log-prob shapes | train-step shapes | positions / distinct (worst) |")
  print("|---|---|---|---|")
  for name, fine, reuse in (("in use, compiled layouts reused (the loop)", now, True),
                            ("in use, each layout chosen afresh", now, False), ("every size 1/16", (16, 16), False)):
    with rounding(*fine):
      c = count(args.steps, args.seed, reuse)
    print(f"| {name}: 1/{fine[0]}, 1/{fine[1]} | {c['logprob_shapes']} | {c['train_shapes']} | "
          f"{c['positions_per_distinct']:.3f} ({c['worst']:.3f}) |")


if __name__ == "__main__":
  main()
