"""Two local processes (jax.distributed on 127.0.0.1, CPU gloo collectives) run two sharded train steps
whose losses and parameters equal one process's.

Cross-process CPU collectives use gloo: jax 0.10's default for `jax_cpu_collectives_implementation`,
set explicitly by the worker (and by rl_jax.distributed.initialize) for older jax releases whose
default could not all-reduce across processes. The coordinator binds to 127.0.0.1 only; the test
gives itself 120 s and kills both workers on any failure.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

from multiprocess_case import run_steps

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT_S = 120


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  port, out = free_port(), tmp_path / "result.json"
  env = dict(os.environ, PYTHONPATH=str(HERE.parent))
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"), str(i), "2", str(port), str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs, deadline = [], time.monotonic() + TIMEOUT_S
  try:
    for p in procs:
      logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
  result = json.loads(out.read_text())
  assert result["processes"] == 2 and result["devices"] == 4
  losses, sums = run_steps()
  np.testing.assert_allclose(result["losses"], losses, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(result["param_sums"], sums, rtol=1e-5, atol=1e-5)
