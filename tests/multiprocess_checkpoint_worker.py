"""One process of the 2-process checkpoint test (run by test_checkpoint.py, not by pytest): both processes save
sharded train states through `Checkpoints` into one directory, restore them with their shardings, then run
steps until jax's preemption service (told by a SIGTERM to process 1) names the step at which both save."""

import json
import os
import signal
import sys
import time

process_id, port, directory, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", coordinator_bind_address=f"127.0.0.1:{port}",
                           num_processes=2, process_id=process_id, initialization_timeout=60,
                           heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)

import numpy as np  # noqa: E402
import optax  # noqa: E402

from rl_jax.checkpoint import Checkpoints, abstract  # noqa: E402
from rl_jax.sharding import MeshConfig, make_mesh, state_shardings  # noqa: E402
from rl_jax.train import init_state  # noqa: E402

mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=1))
opt = optax.adam(1e-3)
host = init_state({"w": np.arange(64.0, dtype=np.float32).reshape(8, 8)}, opt, jax.random.PRNGKey(0))
sh = state_shardings(mesh, host, opt)


def state_at(step):
  """The (host) state saved at `step`, laid out as global arrays over both processes' devices."""
  tree = host._replace(params={"w": host.params["w"] + step}, step=np.int32(step))
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i: np.asarray(x)[i]), tree, sh)


out = {}
with Checkpoints(directory, keep=2) as ckpt:
  for step in (1, 2, 3):
    ckpt.save(step, state_at(step))
  ckpt.wait()
  out["steps"] = ckpt.steps()
with Checkpoints(directory, keep=2) as ckpt:
  restored = ckpt.restore_latest(abstract(host, sh))
  w = restored.state.params["w"]
  out["restored_step"] = restored.position
  out["same_sharding"] = w.sharding == sh.params["w"] and restored.state.step.sharding == sh.step
  out["local_shards_equal"] = all(np.array_equal(np.asarray(s.data), host.params["w"][s.index] + 3)
                                  for s in w.addressable_shards)
  for step in range(4, 200):
    if step == 6 and process_id == 1:
      os.kill(os.getpid(), signal.SIGTERM)     # a preemption notice to one worker only
    if ckpt.reached_preemption(step):
      ckpt.save(step, state_at(step))
      ckpt.wait()
      out["preempted_at"] = step
      break
    time.sleep(0.2)
  out["final_steps"] = ckpt.steps()
with open(out_path, "w") as f:
  json.dump(out, f)
jax.distributed.shutdown()
