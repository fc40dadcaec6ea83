"""One process of the 2-process sharded training test (run by test_multiprocess.py, not by pytest)."""

import json
import os
import sys

process_id, port, num_processes, out_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
# Loopback only: the coordinator binds to 127.0.0.1 (its default is every interface).
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", coordinator_bind_address=f"127.0.0.1:{port}",
                           num_processes=num_processes, process_id=process_id, initialization_timeout=60,
                           heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from multiprocess_case import build_case  # noqa: E402
from rl_jax.sharding import MeshConfig, batch_shardings, make_mesh, state_shardings  # noqa: E402


def to_global(tree, shardings):
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                      tree, shardings)


mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=1))
state, opt, raw_step, batches = build_case()
st_sh = state_shardings(mesh, state, opt)
replicated = NamedSharding(mesh, P())
step = jax.jit(raw_step, in_shardings=(st_sh, batch_shardings(mesh, batches[0])), out_shardings=(st_sh, replicated))
state = to_global(state, st_sh)
losses = []
for b in batches:
  state, metrics = step(state, to_global(b, batch_shardings(mesh, b)))
  losses.append(float(metrics["loss"]))
params = multihost_utils.process_allgather(state.params, tiled=True)
if process_id == 0:
  with open(out_path, "w") as f:
    json.dump({"losses": losses, "param_sums": [float(np.sum(np.asarray(x, np.float64))) for x in
                                                 jax.tree.leaves(params)],
               "devices": jax.device_count(), "processes": jax.process_count()}, f)
jax.distributed.shutdown()
