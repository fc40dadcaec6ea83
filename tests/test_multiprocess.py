"""Two local processes (jax.distributed on 127.0.0.1, CPU gloo collectives) run two sharded train steps,
and a whole RL loop run, whose losses and parameters equal one process's.

Cross-process CPU collectives use gloo: jax 0.10's default for `jax_cpu_collectives_implementation`,
set explicitly by the worker (and by rl_jax.distributed.initialize) for older jax releases whose
default could not all-reduce across processes. The coordinator binds to 127.0.0.1 only; the test
gives itself 120 s (the loop run 240 s) and kills both workers on any failure.
"""

import json

import jax
import numpy as np
import pytest

from local_processes import run_workers
from multiprocess_case import run_steps

TIMEOUT_S = 120


def test_two_processes_equal_one(tmp_path):
  out = tmp_path / "result.json"
  codes, logs = run_workers("multiprocess_worker.py", 2, lambda i: (2, out), TIMEOUT_S)
  assert codes == [0, 0], "\n".join(logs)[-3000:]
  result = json.loads(out.read_text())
  assert result["processes"] == 2 and result["devices"] == 4
  losses, sums = run_steps()
  np.testing.assert_allclose(result["losses"], losses, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(result["param_sums"], sums, rtol=1e-5, atol=1e-5)


LOOP_ARGS = ["--digits=1", "--d_model=32", "--sft_steps=20", "--sft_batch=16", "--rl_steps=2", "--prompts_per_step=4",
             "--group_size=4", "--epochs=2", "--minibatches=2", "--beta=0.05", "--dynamic_sampling=true",
             "--max_gen_batches=2", "--eval_every=2", "--eval_size=8", "--checkpoint_every=0", "--mesh=2,2,1",
             "--progress_bar=false"]


@pytest.mark.slow   # three compiles of the whole run (two workers and the reference): about 1-2 min on 2 cores
def test_the_rl_loop_on_two_processes_equals_one_process(tmp_path):
  """arithmetic_tiny through rl_jax.loop with its mesh spread over two processes (2 CPU devices each): host
  inputs become global arrays, rollouts and log-probs are gathered, and the run equals one process's."""
  from rl_jax import loop
  from rl_jax.experiments import arithmetic_tiny as exp
  out = tmp_path / "loop.json"
  codes, logs = run_workers("multiprocess_loop_worker.py", 2, lambda i: (tmp_path / "run", out, *LOOP_ARGS), 240)
  assert codes == [0, 0], "\n".join(logs)[-3000:]
  two = json.loads(out.read_text())
  assert two["processes"] == 2 and two["devices"] == 4
  one = exp.main(loop.command_line(exp.Config(), [f"--run_dir={tmp_path / 'one'}", *LOOP_ARGS]))
  assert any(h["reward"] > 0 and h["kl"] > 0 for h in one["history"])   # a live update with the KL term
  for a, b in zip(one["history"], two["history"], strict=True):
    assert a["reward"] == b["reward"] and a["gen_batches"] == b["gen_batches"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
  assert one["accuracy"] == two["accuracy"]
  for x, y in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(two["params"], is_leaf=lambda v: isinstance(v, list)),
                  strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y, np.float32), atol=1e-5)
