"""The RL step's floors (rl_jax.experiments.benchmarks.rl_step_floor) against hand-computed values."""
import math

import jax
import pytest

from rl_jax.experiments.benchmarks.rl_step_floor import (Rates, generation_floor, kv_bytes_per_slot, matmul_params,
                                                         rest_floor)
from rl_jax.models import init_params, tiny_config

# 1 layer, d 2, 1 head of 2, ffn 4, vocab 8: N = (2·2 + 2·2 + 2·2 + 2·2 + 3·2·4) + 8·2 = 56 parameters
CFG = tiny_config(8, d_model=2, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=2, ffn_dim=4)


def test_matmul_params_count_every_projection_and_the_tied_head():
  assert matmul_params(CFG) == 56
  cfg = tiny_config(64)
  params = init_params(cfg, jax.random.PRNGKey(0))
  projections = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
  assert matmul_params(cfg) == sum(params["layers"][k].size for k in projections) + params["embed"].size
  assert kv_bytes_per_slot(CFG) == 2 * 1 * 1 * 2 * 4


def test_generation_floor_takes_the_slower_of_compute_and_reads_per_decode_step():
  # compute per decode step 2·56·2 / 112 = 2 s; reads (224 + 16·2·(3 + t)) / 180 = 1.96 s (t = 1), 2.13 s (t = 2)
  f = generation_floor(CFG, Rates(flops=112.0, read=180.0), prompt_tokens=3, batch=2, width=3, new_tokens=3)
  assert f["prefill"] == pytest.approx(2 * 56 * 3 / 112)
  assert f["decode"] == pytest.approx(2.0 + 384 / 180)
  assert f["seconds"] == pytest.approx(3.0 + 2.0 + 384 / 180)
  assert (f["decode_steps"], f["read_bound_steps"]) == (2, 1)


def test_rest_floor_counts_forward_backward_on_packed_tokens_and_adam():
  # 6·(56 - 16)·(3 + 6) + 6·16·6 FLOPs at 112 FLOP/s, plus 7 passes over 224 bytes at 180 B/s
  got = rest_floor(CFG, Rates(flops=112.0, read=180.0), prompt_tokens=3, batch=2, new_tokens=3)
  assert math.isclose(got, (6 * 40 * 9 + 6 * 16 * 6) / 112 + 7 * 224 / 180)
