"""Two local processes (jax.distributed on 127.0.0.1, CPU gloo collectives) run two sharded train steps
whose losses and parameters equal one process's.

Cross-process CPU collectives use gloo: jax 0.10's default for `jax_cpu_collectives_implementation`,
set explicitly by the worker (and by rl_jax.distributed.initialize) for older jax releases whose
default could not all-reduce across processes. The coordinator binds to 127.0.0.1 only; the test
gives itself 120 s and kills both workers on any failure.
"""

import json

import numpy as np

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
