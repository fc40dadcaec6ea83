"""One process of the 2-process RL loop test (run by test_multiprocess.py, not by pytest): arithmetic_tiny
through rl_jax.loop on a mesh spanning both processes' CPU devices."""

import json
import os
import sys

process_id, port, run_dir, out_path, *argv = sys.argv[1:]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

from rl_jax import distributed  # noqa: E402

distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rl_jax import loop  # noqa: E402
from rl_jax.experiments import arithmetic_tiny as exp  # noqa: E402
from rl_jax.sharding import to_host  # noqa: E402

cfg = loop.command_line(exp.Config(), [f"--run_dir={run_dir}", *argv])
out = exp.main(cfg)
params = jax.tree.map(to_host, out["params"])
if jax.process_index() == 0:
  with open(out_path, "w") as f:
    json.dump({"history": out["history"], "accuracy": out["accuracy"], "processes": jax.process_count(),
               "devices": jax.device_count(), "params": jax.tree.map(lambda x: np.asarray(x).tolist(), params)}, f)
jax.distributed.shutdown()
