"""Continuous batching == the static sampler row by row (same rng): tokens, masks and log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.continuous_sampling import generate_continuous
from rl_jax.models import init_params, tiny_config
from rl_jax.sampling import generate

CFG = tiny_config(23, max_seq_len=32)
PARAMS = init_params(CFG, jax.random.PRNGKey(0))
IDS = jnp.asarray([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [0, 9, 9, 1, 2], [0, 0, 0, 4, 4], [1, 2, 3, 4, 5],
                   [0, 0, 0, 0, 8], [6, 5, 4, 3, 2]], jnp.int32)
MASK = (jnp.arange(5)[None, :] >= jnp.argmax(IDS > 0, axis=1)[:, None]).astype(jnp.int32)


@pytest.mark.parametrize("kw", [dict(temperature=1.5, stop_tokens=(3, 4)),
                                dict(temperature=0.8, top_p=0.9, stop_tokens=(3,)),
                                dict(temperature=0.0, stop_tokens=(5,))])
def test_each_row_equals_the_static_sampler(kw):
  static = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(7), max_new_tokens=10, **kw)
  cont = generate_continuous(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(7), slots=3, max_new_tokens=10, **kw)
  np.testing.assert_array_equal(np.asarray(cont.tokens), np.asarray(static.tokens))
  np.testing.assert_array_equal(np.asarray(cont.mask), np.asarray(static.mask))
  np.testing.assert_allclose(np.asarray(cont.logp), np.asarray(static.logp), atol=1e-5)
  lengths = np.asarray(static.mask).sum(1)
  if kw["temperature"] > 0:
    assert lengths.min() < 10                 # some row stopped early, so a slot was refilled mid-run


def test_more_slots_than_prompts_and_bad_slots():
  one = generate_continuous(PARAMS, CFG, IDS[:2], MASK[:2], jax.random.PRNGKey(1), slots=8, max_new_tokens=4,
                            temperature=0.0)
  ref = generate(PARAMS, CFG, IDS[:2], MASK[:2], jax.random.PRNGKey(1), max_new_tokens=4, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(ref.tokens))
  with pytest.raises(ValueError, match="slots must be >= 1"):
    generate_continuous(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(1), slots=0, max_new_tokens=4)
