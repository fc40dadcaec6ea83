"""Every registered objective and advantage estimator runs one RL step through the loop from the command line
of both experiments, or is refused before any compute with a message naming what the loop does not provide.

Each arithmetic_tiny method is its own test (pytest-xdist spreads them over its workers). A worker compiles the
sampler and the evaluation once and shares them (`rl_jax.loop_run.Run` caches its jitted functions per model and
settings), so a method costs the compile of its own train step. Objectives that read nothing but the standard
inputs, and the estimators, run on arithmetic_tiny's default plain rows (a cheaper compile; packed rows give the
same values, tests/test_packed_layout.py); those the loop feeds more (entropy, token ids, groups, a key, sampler
log-probs) run on packed rows (--packed=true, the loop's default layout). GSM8K (--model=tiny-random, its tokenizer loaded once) runs one test over a
subset — sampler log-probs, a stateful estimator, and refusals — and, marked slow, every method.
The loop's jitted functions are compiled here with LLVM's optimisation off (XLA's
xla_backend_optimization_level=0: the same program, slower code, compiled in about half the time), and
dropped from the loop's cache afterwards.
"""

import functools
import json

import numpy as np
import pytest

from rl_jax import advantages, loop, objectives, registry
from rl_jax.experiments import arithmetic_tiny
from rl_jax.metrics_log import read_metrics

ARITHMETIC = ["--digits=1", "--d_model=16", "--n_layers=1", "--sft_steps=0", "--rl_steps=1", "--prompts_per_step=2",
              "--group_size=2", "--epochs=1", "--minibatches=1", "--eval_every=1", "--eval_size=1",
              "--checkpoint_every=0", "--progress_bar=false"]
GSM8K = ["--model=tiny-random", "--rl_steps=1", "--prompts_per_step=2", "--group_size=2", "--max_new_tokens=4",
         "--eval_size=1", "--eval_max_new_tokens=2", "--eval_batch=1", "--checkpoint_every=0", "--progress_bar=false"]
TREE_ADVANTAGES = ("spo_tree", "treepo")   # path estimators: they run on --rollout=tree
METHODS = ([("objective", n) for n in objectives.names()] + [("advantage", n) for n in advantages.names()]
           + [("tree", n) for n in TREE_ADVANTAGES])
GSM8K_CI = [("objective", "tis"), ("advantage", "dcpo"), ("objective", "sspo"),
            ("advantage", "spo_chain"), ("advantage", "forking_tokens")]
# what the loop must feed: objectives reading entropy (HAPO), token ids and groups (GTPO), a key (Clip-Cov),
# the sampler's log-probs (TIS, MIS); estimators from rewards, from the mask, token-level, stateful, Monte-Carlo
MUST_RUN = {("objective", n) for n in ("grpo", "hapo", "gtpo", "clip_cov", "tis", "mis")} | {
    ("advantage", n) for n in ("grpo", "dr_grpo", "rloo", "ngrpo", "opmd", "tempo", "dcpo", "spo_chain")}
MUST_REFUSE = {("objective", "rank_grpo"), ("objective", "sspo"), ("advantage", "gae"), ("advantage", "treepo")}


@pytest.fixture(autouse=True, scope="module")
def quick_compiles():
  """Every function the loop jits (`rl_jax.sharding.jit_global`) compiled without LLVM optimisation; the compiled
  functions this module added to the loop's cache are dropped when it ends."""
  from rl_jax import loop_run, sharding
  before, jit_global = set(loop_run._COMPILED), sharding.jit_global
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sharding, "jit_global", functools.partial(
        jit_global, compiler_options={"xla_backend_optimization_level": 0}))
    yield
  for key in set(loop_run._COMPILED) - before:
    del loop_run._COMPILED[key]


def method_id(method) -> str:
  return "-".join(method)


def argv_of(method) -> list:
  kind, name = method
  if kind == "tree":
    return [f"--advantage={name}", "--rollout=tree"]
  extra = kind == "objective" and (registry.needs(objectives.get(name)) or registry.takes(objectives.get(name),
                                                                                          "group_size"))
  return [f"--{kind}={name}"] + (["--packed=true"] if extra else [])    # arithmetic_tiny's default rows are plain


def inputs(kind: str, name: str) -> list:
  """The inputs a method declares (rl_jax.registry): an objective's required keywords, an estimator's positional
  data and required keywords."""
  if kind == "objective":
    return registry.needs(objectives.get(name))
  fn = advantages.get(name)
  return registry.positional(fn) + registry.needs(fn)


def check_refusal(method, message: str) -> None:
  """A refusal names the method and exactly the inputs it declares that the loop lacks."""
  kind, name = method
  if kind == "objective":
    missing = [n for n in inputs(kind, name) if n not in loop.OBJECTIVE_INPUTS]
    assert missing and f"objective={name} needs {missing}, which the RL loop does not provide" in message, message
  elif "Monte-Carlo" in message:   # a task without a per-completion verifier (reward)
    assert name in loop.MC_ADVANTAGES and "needs a reward(completion_ids, answer) method" in message, message
  else:
    declared = inputs(kind, name)
    assert f"Advantage {name!r} cannot run here: it needs" in message and all(repr(n) in message for n in declared), \
        message


def check_step(method, run_dir) -> None:
  """One logged RL step with a finite loss and a reward in [0, 1], trained with the method asked for."""
  rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("phase") == "rl"]
  assert [r["step"] for r in rows] == [1], rows
  assert np.isfinite(rows[0]["loss"]) and 0.0 <= rows[0]["reward"] <= 1.0, rows[0]
  settings = json.loads((run_dir / "config.json").read_text())
  kind, name = method
  assert settings["advantage" if kind == "tree" else kind] == name


def one_step(parse, main, method, run_dir):
  """The method's one-step run from the command line; its refusal message, or None when it ran (and was checked)."""
  try:
    cfg = parse([*argv_of(method), f"--run_dir={run_dir}"])
    main(cfg)
  except ValueError as e:
    check_refusal(method, str(e))
    return str(e)
  check_step(method, run_dir)
  return None


@pytest.fixture(scope="module")
def gsm8k():
  """gsm8k_smollm2 with its tokenizer loaded once per process and no plot (the run itself unchanged)."""
  from rl_jax.experiments import gsm8k_smollm2
  from rl_jax.models import smollm2_gguf_path
  try:
    smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(f"{e} (the GSM8K experiment uses its tokenizer)")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(gsm8k_smollm2, "load_tokenizer", functools.cache(gsm8k_smollm2.load_tokenizer))
    mp.setattr(gsm8k_smollm2, "plot_curves", lambda rows, path, **kw: path)
    yield gsm8k_smollm2


def arithmetic_step(method, run_dir):
  return one_step(lambda argv: loop.command_line(arithmetic_tiny.Config(), ARITHMETIC + argv),
                  functools.partial(arithmetic_tiny.main, plot=False), method, run_dir)


def gsm8k_step(module, method, run_dir):
  return one_step(lambda argv: module.make_config(GSM8K + argv), module.main, method, run_dir)


@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_arithmetic_tiny_runs_one_step_of_every_method_or_refuses_it_naming_its_inputs(method, tmp_path):
  message = arithmetic_step(method, tmp_path)
  if method in MUST_RUN or method[0] == "tree":
    assert message is None, message
  if method in MUST_REFUSE:
    assert message is not None
  if method[0] == "objective":   # refused exactly when it needs an input the loop does not feed
    assert (message is None) == all(n in loop.OBJECTIVE_INPUTS for n in inputs(*method))


def gsm8k_runs(method) -> bool:
  """GSM8K runs what arithmetic_tiny's config accepts, except Monte-Carlo values (its task has no per-completion
  reward)."""
  return arithmetic_refusal(method) is None and method[1] not in loop.MC_ADVANTAGES


def test_gsm8k_runs_one_step_of_methods_fed_by_the_sampler_tokens_and_question_ids_or_refuses_them(gsm8k, tmp_path):
  for method in GSM8K_CI:   # one test: one worker compiles the GSM8K model once
    message = gsm8k_step(gsm8k, method, tmp_path / method_id(method))
    assert (message is None) == gsm8k_runs(method), (method, message)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_gsm8k_runs_one_step_of_every_method_or_refuses_it(method, gsm8k, tmp_path):
  message = gsm8k_step(gsm8k, method, tmp_path)
  assert (message is None) == gsm8k_runs(method), message


def arithmetic_refusal(method):
  """The refusal of arithmetic_tiny's config (checked before any compute), None when it accepts the method."""
  try:
    loop.command_line(arithmetic_tiny.Config(), ARITHMETIC + argv_of(method))
  except ValueError as e:
    return str(e)
  return None


def test_method_keywords_are_config_checked_before_compute(tmp_path):
  exp = arithmetic_tiny
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
