"""Every registered objective and advantage estimator runs one RL step through the loop from the command
line, or is refused before any compute with a message naming what the loop does not provide."""

import numpy as np
import pytest

from rl_jax.experiments import arithmetic_tiny as exp
from rl_jax import advantages, loop, objectives, registry

TINY = ["--digits=1", "--d_model=16", "--n_layers=1", "--sft_steps=0", "--rl_steps=1", "--prompts_per_step=2",
        "--group_size=2", "--epochs=1", "--minibatches=1", "--eval_every=1", "--eval_size=2",
        "--checkpoint_every=0", "--progress_bar=false"]


def one_step(tmp_path, *argv):
  """Config from the command line, then one RL step; None when the combination is refused."""
  try:
    cfg = loop.command_line(exp.Config(), TINY + [f"--run_dir={tmp_path}", *argv])
  except ValueError as e:
    return str(e)
  out = exp.main(cfg)
  assert len(out["history"]) == 1 and np.isfinite(out["history"][0]["loss"]), argv
  return None


def refusal(name: str, **kw):
  """The config's refusal message, or None when the loop accepts the combination (checked before compute)."""
  try:
    exp.Config(**kw)
  except ValueError as e:
    return str(e)
  return None


def test_every_method_is_accepted_or_refused_before_compute_naming_what_is_missing():
  for name in objectives.names():
    missing = [n for n in registry.needs(objectives.get(name)) if n not in loop.OBJECTIVE_INPUTS]
    message = refusal(name, objective=name)
    assert (message is None) == (not missing), (name, message)
    if missing:
      assert f"objective={name} needs {missing}" in message
  runnable = []
  for name in advantages.names():
    message = refusal(name, advantage=name)
    if message is None:
      runnable.append(name)
    else:
      assert f"Advantage {name!r} cannot run here: it needs" in message, (name, message)
  assert {"grpo", "dr_grpo", "rloo", "ngrpo", "tempo", "dcpo"} <= set(runnable)
  assert refusal("x", objective="rank_grpo") and refusal("x", advantage="treepo")


def test_the_sampler_log_probs_reach_tis_and_mis_and_tempo_runs(tmp_path):
  for argv in (["--objective=tis"], ["--objective=mis"], ["--advantage=tempo"], ["--advantage=dcpo"]):
    assert one_step(tmp_path / argv[0][2:], *argv) is None


@pytest.mark.slow
def test_every_objective_runs_one_step_or_is_refused_naming_its_missing_input(tmp_path):
  refused = {}
  for name in objectives.names():
    message = one_step(tmp_path / name, f"--objective={name}")
    missing = [n for n in registry.needs(objectives.get(name)) if n not in loop.OBJECTIVE_INPUTS]
    if missing:
      assert message is not None and f"objective={name} needs {missing}" in message
      refused[name] = missing
    else:
      assert message is None, (name, message)
  # what the loop provides is used: entropy (HAPO), token ids and groups (GTPO), rng (Clip-Cov), μ (TIS, MIS)
  assert not {"hapo", "gtpo", "clip_cov", "tis", "mis"} & set(refused)
  assert set(refused) >= {"rank_grpo", "sspo"}


@pytest.mark.slow
def test_every_advantage_runs_one_step_or_is_refused_naming_its_inputs(tmp_path):
  ran = []
  for name in advantages.names():
    message = one_step(tmp_path / name, f"--advantage={name}")
    if message is None:
      ran.append(name)
    else:
      assert f"Advantage {name!r} cannot run here: it needs" in message, (name, message)
  assert {"grpo", "dr_grpo", "rloo", "ngrpo", "tempo", "dcpo"} <= set(ran)


def test_method_keywords_are_config_checked_before_compute(tmp_path):
  cfg = loop.command_line(exp.Config(), ["--objective=dapo", "--objective.eps_high=0.3",
                                         "--advantage.scale_by_std=false"])
  assert cfg.objective_args == "eps_high=0.3" and cfg.advantage_args == "scale_by_std=false"
  assert loop.objective_kwargs(cfg, 8)["eps_high"] == 0.3 and loop.advantage_kwargs(cfg) == {"scale_by_std": False}
  with pytest.raises(ValueError, match=r"takes no \['eps_hihg'\]"):
    loop.command_line(exp.Config(), ["--objective=dapo", "--objective.eps_hihg=0.3"])
  with pytest.raises(ValueError, match="expects float"):
    loop.command_line(exp.Config(), ["--objective=dapo", "--objective.eps_high=wide"])
  with pytest.raises(ValueError, match="beta is set by the run"):
    loop.command_line(exp.Config(), ["--objective.beta=0.1"])
  with pytest.raises(ValueError, match="takes no"):
    exp.Config(advantage="rloo", advantage_args="eps=1")
