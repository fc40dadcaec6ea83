"""TEMPO / TreePO advantages per batch: rl_jax (jit, CPU) vs the naive way (a Python prefix tree per group).

  python -m rl_jax.experiments.benchmarks.advantages_bench [--sizes=8x8x1024,64x16x8192] [--naive-max-tokens=N]

The naive TEMPO path builds a trie of every group's responses in Python and reads each token's
prefix values from it, as the papers' reference code does per group.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.experiments.benchmarks.timing import median_time

from rl_jax import advantages


def naive_tempo(tokens, mask, rewards, eps=1e-6):
  P, G, T = tokens.shape
  out = np.zeros((P, G, T))
  for p in range(P):
    trie = {}
    for i in range(G):                                  # insert: node → list of members
      node = trie
      for j in range(T):
        if not mask[p, i, j]:
          break
        node = node.setdefault(int(tokens[p, i, j]), {"__m": []})
        node["__m"].append(i)
    r = rewards[p]
    mu, sd = r.mean(), r.std(ddof=1)
    for i in range(G):
      node, v_cur = trie, mu
      for j in range(T):
        if not mask[p, i, j]:
          break
        node = node[int(tokens[p, i, j])]
        v_next = r[node["__m"]].mean()
        out[p, i, j] = (r[i] - mu + v_next - v_cur) / (sd + eps)
        v_cur = v_next
  return out


def naive_treepo(rewards, paths):
  P, G, D = paths.shape
  out = np.zeros((P, G))
  for p in range(P):
    uids = ["#".join(str(x) for x in paths[p, g] if x >= 0) for g in range(G)]
    for g in range(G):
      terms = []
      parts = uids[g].split("#")
      for d in range(D):
        key = "#".join(parts[:d])
        group = [k for k in range(G) if "#".join(uids[k].split("#")[:d]) == key]
        if d == 0 or len(group) > 1:
          terms.append(rewards[p, g] - rewards[p, group].mean())
      out[p, g] = np.mean(terms)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="8x8x1024,8x16x1024,64x8x1024,8x8x8192")
  ap.add_argument("--naive-max-tokens", type=int, default=2_000_000, help="skip the naive path above P·G·T")
  args = ap.parse_args()
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print("| estimator | P | G | T | rl_jax jit (ms) | naive Python (ms) | speed-up |")
  print("|---|---|---|---|---|---|---|")
  for spec in args.sizes.split(","):
    P, G, T = (int(x) for x in spec.split("x"))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, (P, G, T)).astype(np.int32)
    tokens[:, :, :2] = rng.integers(0, 2, (P, G, 2))     # shared first tokens: a real tree near the root
    mask = np.ones((P, G, T), np.float32)
    r = rng.integers(0, 2, (P, G)).astype(np.float32)
    fn = jax.jit(advantages.tempo)
    ours = median_time(fn, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(r), repeats=3) * 1e3
    naive = float("nan")
    if P * G * T <= args.naive_max_tokens:
      t0 = time.perf_counter()
      naive_tempo(tokens, mask, r.astype(np.float64))
      naive = (time.perf_counter() - t0) * 1e3
    print(f"| tempo | {P} | {G} | {T} | {ours:.1f} | {naive:.1f} | {naive / ours:.1f}x |")
    paths = rng.integers(0, 2, (P, G, 4)).astype(np.int32)
    paths = np.cumsum(paths * (2 ** np.arange(4)), -1)   # node ids unique per prefix
    fn = jax.jit(lambda r, p, m: advantages.treepo(r, p, m, whiten=False))
    ours = median_time(fn, jnp.asarray(r), jnp.asarray(paths), jnp.asarray(mask), repeats=3) * 1e3
    t0 = time.perf_counter()
    naive_treepo(r.astype(np.float64), paths)
    naive = (time.perf_counter() - t0) * 1e3
    print(f"| treepo (sequence-level part) | {P} | {G} | {T} | {ours:.1f} | {naive:.1f} | {naive / ours:.1f}x |")


if __name__ == "__main__":
  main()
