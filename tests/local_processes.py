"""Start N local worker processes of one test script on a free 127.0.0.1 port and collect them.

Shared by the multi-process tests: each worker gets `[index, port, *args(index)]` on its command line,
the environment without XLA_FLAGS (each process has its own CPU devices) and the tests folder on
PYTHONPATH; every worker still running at the deadline is killed."""

import os
import pathlib
import socket
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_workers(script: str, n: int, args, timeout_s: float):
  """Runs `script` (in tests/) as n processes; returns (return codes, combined output of each)."""
  port = free_port()
  env = dict(os.environ, PYTHONPATH=str(HERE.parent))
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, str(HERE / script), str(i), str(port), *map(str, args(i))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
  logs, deadline = [], time.monotonic() + timeout_s
  try:
    for p in procs:
      logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [p.returncode for p in procs], logs
