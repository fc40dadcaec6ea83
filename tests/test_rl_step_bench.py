"""The RL-step benchmark (rl_jax vs TRL's GRPOTrainer) runs end to end in its --quick mode."""
import dataclasses
import math

import pytest

pytest.importorskip("torch", reason="the RL-step benchmark compares against TRL, which needs torch")
pytest.importorskip("trl", reason="TRL is not installed (pip install trl): the RL-step benchmark's peer")
pytest.importorskip("datasets", reason="TRL's GRPOTrainer needs the datasets package")

from rl_jax.experiments.benchmarks import rl_step_bench  # noqa: E402


def _cells(line):
  return [c.strip() for c in line.strip().strip("|").split("|")]


def test_quick_mode_prints_one_row_of_positive_finite_numbers(capsys):
  rl_step_bench.main(["--quick", "--steps=3", "--trl-checkpointing=on"])
  out = capsys.readouterr().out
  lines = [ln for ln in out.splitlines() if ln.startswith("|")]
  assert _cells(lines[0]) == rl_step_bench.HEADER
  rows = [_cells(ln) for ln in lines[2:3]]
  assert len(rows) == 1 and rows[0][0].startswith("tiny random Llama")
  model, pxg, tokens, *numbers = rows[0]
  case = rl_step_bench.QUICK["tiny"]
  assert pxg == f"{case.prompts} x {case.group}"
  assert tokens == str(case.prompts * case.group * case.new_tokens)  # both sides generated the full length
  values = [float(x.rstrip("x")) for x in numbers]
  assert len(values) == 5 and all(math.isfinite(v) and v > 0 for v in values)
  jax_s, jax_tps, trl_s, trl_tps, ratio = values
  assert jax_tps == pytest.approx(float(tokens) / jax_s, rel=0.02)
  assert trl_tps == pytest.approx(float(tokens) / trl_s, rel=0.02)
  assert ratio == pytest.approx(jax_tps / trl_tps, rel=0.02)
  assert "machine:" in out and "trl " in out
  assert "TRL gradient checkpointing on, rl_jax no remat, layers unrolled" in out     # the flag, named next to the figures
  # the phase table: CPU seconds (wall in brackets) of generation and the rest per side, their ratios, the floors
  assert len(lines) == 6 and _cells(lines[3]) == rl_step_bench.phase_header("TRL")
  phases = _cells(lines[5])
  assert phases[:3] == [model, pxg, tokens]
  cpu = [float(c.split()[0]) for c in phases[3:7]]
  wall = [float(c.split()[1].strip("()")) for c in phases[3:7]]
  assert all(math.isfinite(v) and v > 0 for v in cpu + wall)
  assert wall[0] + wall[1] == pytest.approx(jax_s, rel=0.3) and wall[2] + wall[3] == pytest.approx(trl_s, rel=0.3)
  gen_ratio, rest_ratio, gen_floor, rest_floor = (float(c.rstrip("x")) for c in phases[7:])
  assert gen_ratio == pytest.approx(cpu[2] / cpu[0], rel=0.02) and rest_ratio == pytest.approx(cpu[3] / cpu[1], rel=0.02)
  assert 0 < gen_floor < cpu[0] and 0 < rest_floor < cpu[1]   # a floor no implementation gets under
  assert "load average" in out and "timed steps compiled for" in out


def test_gsm8k_case_is_the_experiments_cpu_default_step():
  from rl_jax.experiments.gsm8k_smollm2 import Config

  cfg, case = Config(), rl_step_bench.FULL["gsm8k"]
  assert (case.prompts, case.group, case.new_tokens, case.remat, case.remat_policy) == (
      cfg.prompts_per_step, cfg.group_size, cfg.max_new_tokens, cfg.remat, cfg.remat_policy)
  assert rl_step_bench.trl_checkpointing(case) == cfg.remat         # TRL matches unless told otherwise
  assert rl_step_bench.trl_checkpointing(dataclasses.replace(case, trl_checkpointing=not cfg.remat)) != cfg.remat
  assert (case.prompts, case.group, case.new_tokens) == (8, 4, 192)


def test_rejects_unknown_models_and_bad_steps():
  with pytest.raises(ValueError, match="Unknown models"):
    rl_step_bench.run(("gpt5",), quick=True)
  with pytest.raises(ValueError, match="steps"):
    rl_step_bench.run(("tiny",), steps=0, quick=True)
  with pytest.raises(ValueError, match="tiny model only"):
    rl_step_bench.run(("smollm2",), quick=True)


def test_compile_seconds_grow_with_a_new_compilation_only():
  import jax
  import jax.numpy as jnp

  before = rl_step_bench.compile_seconds()
  f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
  f(jnp.ones(7)).block_until_ready()
  compiled = rl_step_bench.compile_seconds()
  assert compiled > before
  f(jnp.ones(7)).block_until_ready()             # cached: no compilation
  assert rl_step_bench.compile_seconds() == compiled
