"""Lower bounds on the two phases of one RL step on this machine: generation and the rest (forward, backward, Adam).

Each bound counts only what no implementation can avoid, at rates measured in the same process
(`decode_bench.matmul_rate`: a 2048³ float32 matmul; `decode_bench.read_bandwidth`: a 256 MiB sum):

  generation = 2·N·Σ|prompt| / R                                      one prefill per prompt (compute bound)
             + Σ_{t=1}^{T-1} max(2·N·B / R, (M + K·B·(W + t)) / BW)     T - 1 decode steps at batch B
  rest       = (6·(N - V·d)·(Σ|prompt| + B·T) + 6·V·d·B·T) / R           forward + backward, each prompt once and
             + 7·M / BW                                                the LM head on completion tokens only; Adam
                                                                       reads weights, gradients, m, v, writes three

N: parameters that multiply activations (the tied embedding is the LM head; an untied input embedding is a
gather), M: their float32 bytes, K: K/V bytes per cache slot and row (2·layers·kv heads·head dim·4), W: the
padded prompt width every row attends, V·d: the LM head. Attention score FLOPs are left out (under 10% of the
matmuls at these lengths), so both bounds are below what any implementation can reach.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Rates:
  """Measured rates of this process: FLOP/s of a large matmul and bytes/s of a large read."""
  flops: float
  read: float


def matmul_params(cfg) -> int:
  """N: parameters that multiply activations (all but an untied input embedding, which is a gather)."""
  layer = (cfg.d_model * cfg.n_heads * cfg.head_dim * 2 + cfg.d_model * cfg.n_kv_heads * cfg.head_dim * 2
           + 3 * cfg.d_model * cfg.ffn_dim)
  return cfg.n_layers * layer + cfg.vocab_size * cfg.d_model


def kv_bytes_per_slot(cfg) -> int:
  """K: float32 keys and values of one cache slot of one row, all layers."""
  return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4


def generation_floor(cfg, rates: Rates, *, prompt_tokens: int, batch: int, width: int, new_tokens: int) -> dict:
  """Seconds of the generation bound above, split into prefill and decode, and how many decode steps are
  bandwidth-bound. `prompt_tokens`: Σ|prompt| over the step's distinct prompts."""
  n = matmul_params(cfg)
  weight_bytes, k = 4 * n, kv_bytes_per_slot(cfg)
  prefill = 2 * n * prompt_tokens / rates.flops
  compute = 2 * n * batch / rates.flops
  reads = [(weight_bytes + k * batch * (width + t)) / rates.read for t in range(1, new_tokens)]
  decode = sum(max(compute, r) for r in reads)
  return {"seconds": prefill + decode, "prefill": prefill, "decode": decode,
          "read_bound_steps": sum(r >= compute for r in reads), "decode_steps": len(reads)}


def rest_floor(cfg, rates: Rates, *, prompt_tokens: int, batch: int, new_tokens: int) -> float:
  """Seconds of the rest-of-step bound above (forward + backward + Adam)."""
  n, head = matmul_params(cfg), cfg.vocab_size * cfg.d_model
  completion = batch * new_tokens
  flops = 6 * (n - head) * (prompt_tokens + completion) + 6 * head * completion
  return flops / rates.flops + 7 * 4 * n / rates.read


def measured_rates() -> tuple[Rates, Rates]:
  """(per wall second, per CPU second of this process) rates, measured now (`decode_bench`)."""
  from rl_jax.experiments.benchmarks.decode_bench import matmul_rate, read_bandwidth

  (flops, cpu_flops), (read, cpu_read) = matmul_rate(), read_bandwidth()
  return Rates(flops, read), Rates(cpu_flops, cpu_read)
