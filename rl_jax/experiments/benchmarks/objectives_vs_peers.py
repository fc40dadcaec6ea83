"""Objective + gradient w.r.t. the log-probabilities: rl_jax (jit) vs TRL and verl (torch eager, torch.compile).

Same float32 inputs for every library; each timing is the median of `--repeats` runs after warm-up
(compilation excluded). TRL's loss is `GRPOTrainer._compute_loss` called on a stand-in object (as in
tests/test_parity_trl.py); verl's is `core_algos.get_policy_loss_fn(mode)`. Peers that are not installed
are reported as "n/a". Run:

  python -m rl_jax.experiments.benchmarks.objectives_vs_peers [--sizes 32x1024,256x4096] [--repeats 7] [--no-compile]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

import rl_jax
from rl_jax.machine import cpu_model

# (label, rl_jax objective + keywords, TRL loss_type + level, verl mode + aggregation + config)
CASES = [
    ("GRPO clip, seq-mean-token-mean", ("grpo", dict(beta=0.0, agg="seq-mean-token-mean")),
     ("grpo", "token"), ("vanilla", "seq-mean-token-mean", dict(clip_ratio_c=1e9))),
    ("DAPO clip-higher, token-mean", ("dapo", dict(dual_clip_c=None)),
     ("dapo", "token"), ("vanilla", "token-mean", dict(clip_ratio_high=0.28, clip_ratio_c=1e9))),
    ("GSPO sequence ratio", ("gspo", dict()),
     ("grpo", "sequence"), ("gspo", "seq-mean-token-mean", dict(clip_ratio_low=3e-4, clip_ratio_high=4e-4))),
    ("CISPO (TRL: absolute cap 5)", ("cispo", dict(cap_mode="absolute", eps_high=5.0)),
     ("cispo", "token"), None),
    ("CISPO (verl: relative bounds)", ("cispo", dict()),
     None, ("cispo", "token-mean", dict(clip_ratio_low=10.0, clip_ratio_high=0.2))),
]


def make_inputs(b, t, seed=0):
  rng = np.random.default_rng(seed)
  old = rng.uniform(-3.0, -0.05, (b, t)).astype(np.float32)
  logp = (old + rng.normal(0.0, 0.1, (b, t))).astype(np.float32)
  lengths = rng.integers(t // 4, t + 1, b)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  adv = rng.normal(0.0, 1.0, (b,)).astype(np.float32)
  return logp, old, mask, adv


def median_time(fn, repeats):
  fn()
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def ours_fn(name, kw, logp, old, mask, adv):
  obj = rl_jax.objectives.get(name)
  vg = jax.jit(jax.value_and_grad(lambda lp, o, a, m: obj(lp, o, a, m, **kw)[0]))
  args = tuple(jnp.asarray(x) for x in (logp, old, adv, mask))

  def run():
    v, g = vg(*args)
    g.block_until_ready()
  return run


def trl_fn(loss_type, level, logp, old, mask, adv, compile_):
  import torch
  from trl.trainer.grpo_trainer import GRPOTrainer

  b, t = logp.shape
  acc = SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x,
                        reduce=lambda x, reduction="sum": x)
  m = torch.tensor(mask)
  base = dict(prompt_ids=torch.zeros((b, 1), dtype=torch.long), prompt_mask=torch.ones((b, 1), dtype=torch.long),
              completion_ids=torch.zeros((b, t), dtype=torch.long), completion_mask=m, advantages=torch.tensor(adv),
              old_per_token_logps=torch.tensor(old), num_items_in_batch=m.sum())
  eps = (3e-4, 4e-4) if level == "sequence" else (0.2, 0.28 if loss_type == "dapo" else 0.2)
  if loss_type == "cispo":
    eps = (0.2, 5.0)

  holder = {}
  stub = SimpleNamespace(
      loss_type=loss_type, importance_sampling_level=level, epsilon_low=eps[0], epsilon_high=eps[1], beta=0.0,
      args=SimpleNamespace(delta=None), top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
      vllm_importance_sampling_correction=False, model=SimpleNamespace(training=False),
      current_gradient_accumulation_steps=1, max_completion_length=t, accelerator=acc,
      _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
      _get_per_token_logps_and_entropies=lambda *a, **k: (holder["lp"], torch.zeros_like(holder["lp"]), None))

  def loss_of(lp):
    holder["lp"] = lp
    stub._metrics.clear()
    return GRPOTrainer._compute_loss(stub, None, base)

  return _torch_runner(loss_of, logp, compile_)


def verl_fn(mode, agg, cfg, logp, old, mask, adv, compile_):
  import torch
  from verl.trainer.ppo import core_algos
  from verl.workers.config import ActorConfig

  config = ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1, **cfg)
  fn = core_algos.get_policy_loss_fn(mode)
  o, a, m = torch.tensor(old), torch.tensor(adv)[:, None] * torch.tensor(mask), torch.tensor(mask)
  return _torch_runner(lambda lp: fn(o, lp, a, m, loss_agg_mode=agg, config=config)[0], logp, compile_)


def _torch_runner(loss_of, logp, compile_):
  import torch

  if compile_:
    loss_of = torch.compile(loss_of)
  lp0 = torch.tensor(logp)

  def run():
    lp = lp0.clone().requires_grad_(True)
    loss_of(lp).backward()
  return run


def timed(make, repeats):
  try:
    return median_time(make(), repeats)
  except Exception as exc:  # a peer that is missing or does not compile
    return f"n/a ({type(exc).__name__})"


def machine():
  import torch
  return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPU cores visible, Python "
          f"{platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}"
          f" (threads {torch.get_num_threads()})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="32x1024,32x4096,256x1024,256x4096")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile columns")
  args = parser.parse_args()
  print(machine())
  cols = ["rl_jax jit", "TRL eager", "verl eager"] + ([] if args.no_compile else ["TRL compile", "verl compile"])
  print("| objective | B×T | " + " | ".join(f"{c} (ms)" for c in cols) + " | best peer / rl_jax |")
  print("|" + "---|" * (len(cols) + 3))
  for size in args.sizes.split(","):
    b, t = (int(x) for x in size.split("x"))
    data = make_inputs(b, t)
    for label, (name, kw), trl_case, verl_case in CASES:
      res = {"rl_jax jit": timed(lambda: ours_fn(name, kw, *data), args.repeats)}
      for comp, suffix in ((False, "eager"), (True, "compile")):
        if comp and args.no_compile:
          continue
        res[f"TRL {suffix}"] = (timed(lambda: trl_fn(*trl_case, *data, comp), args.repeats) if trl_case else "—")
        res[f"verl {suffix}"] = (timed(lambda: verl_fn(*verl_case, *data, comp), args.repeats) if verl_case else "—")
      peers = [v for k, v in res.items() if k != "rl_jax jit" and isinstance(v, float)]
      ratio = f"{min(peers) / res['rl_jax jit']:.2f}×" if peers and isinstance(res["rl_jax jit"], float) else "—"
      cells = [f"{res[c] * 1e3:.2f}" if isinstance(res[c], float) else res[c] for c in cols]
      print(f"| {label} | {b}×{t} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
