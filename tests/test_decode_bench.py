"""decode_bench's bookkeeping of donated weights: rows donate their weights (no per-call copy into the scan's loop
state), so no row may hold a buffer of the parameters or of itself twice, and a row's handed-back weights replace
the donated ones in every row that shares them."""

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.experiments.benchmarks import decode_bench


def test_own_copies_shared_and_repeated_leaves_only():
  params = {"embed": jnp.arange(6.0).reshape(2, 3), "norm": jnp.ones(3)}
  fresh = jnp.zeros(4)
  tree = {"embed": params["embed"], "head": params["embed"], "norm": params["norm"], "w": fresh, "w2": fresh}
  owned = decode_bench._own(tree, {id(a) for a in jax.tree.leaves(params)})
  assert owned["w"] is fresh                                        # first use of a buffer of its own: kept
  others = [owned[k] for k in ("embed", "head", "norm", "w2")]
  assert all(a is not b for a in others for b in (*jax.tree.leaves(params), fresh))
  assert owned["embed"] is not owned["head"]
  np.testing.assert_array_equal(owned["head"], params["embed"])


def test_call_hands_returned_weights_to_every_row_sharing_them():
  w, other = {"a": jnp.ones(2)}, {"a": jnp.zeros(2)}
  step = jax.jit(lambda x, w: (x + w["a"], w), donate_argnums=(0, 1))
  args = [(jnp.zeros(2), w), (jnp.zeros(2), w), (jnp.zeros(2), other)]
  wall, cpu = decode_bench._call(step, args, 0, timed=True)
  assert wall >= 0 and cpu >= 0
  assert args[1][1] is args[0][1] and args[2][1] is other          # the sharer follows, the other row keeps its own
  decode_bench._call(step, args, 1, timed=False)                    # would fail on a donated (deleted) buffer
  np.testing.assert_array_equal(args[1][0], jnp.ones(2))
  assert args[0][1] is args[1][1]
