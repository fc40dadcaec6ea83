"""The sampler refuses bad arguments before compiling: sampling settings, and prompt ids outside the vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.models import init_params, tiny_config
from rl_jax.sampling import generate, generate_raw

CFG = tiny_config(23, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32, max_seq_len=32)
PARAMS = init_params(CFG, jax.random.PRNGKey(0))
IDS = jnp.array([[0, 5, 6], [3, 4, 5]], jnp.int32)
MASK = jnp.array([[0, 1, 1], [1, 1, 1]], jnp.int32)


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(top_p=0.0), "top_p must be > 0"),
    (dict(top_p=1.5), "top_p must be <= 1"),
    (dict(top_p=float("nan")), "top_p must be finite"),
    (dict(top_k=-2), "top_k must be >= 0"),
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(stop_tokens=(23,)), "stop token / pad_id must be <= 22"),
    (dict(stop_tokens=(-1,)), "stop token / pad_id must be >= 0"),
    (dict(pad_id=99), "stop token / pad_id must be <= 22"),
])
def test_bad_sampling_arguments_are_errors(kw, match):
  args = dict(max_new_tokens=3, temperature=1.0)
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(0), **args)
  with pytest.raises(ValueError, match=match):   # the raw function under the caller's own jit: checked at trace time
    jax.jit(lambda p, i, m, k: generate_raw(p, CFG, i, m, k, **args))(PARAMS, IDS, MASK, jax.random.PRNGKey(0))


@pytest.mark.parametrize("bad", [23, -1, 1000])
def test_prompt_ids_outside_the_vocabulary_are_errors(bad):
  ids = np.asarray(IDS).copy()
  ids[1, 0] = bad
  with pytest.raises(ValueError, match=r"prompts holds token ids outside \[0, 23\)"):
    generate(PARAMS, CFG, jnp.asarray(ids), MASK, jax.random.PRNGKey(0), max_new_tokens=2, temperature=0.0)
  with pytest.raises(ValueError, match="integer token ids"):
    generate(PARAMS, CFG, jnp.asarray(ids, jnp.float32), MASK, jax.random.PRNGKey(0), max_new_tokens=2)


def test_valid_edges_run():
  out = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(0), max_new_tokens=2, temperature=0.5, top_p=1.0,
                 top_k=0, stop_tokens=(22,), pad_id=0)
  assert out.tokens.shape == (2, 2) and int(jnp.max(out.tokens)) < 23


def test_rollout_passes_top_p_to_the_sampler():
  """A nucleus of (almost) zero mass keeps only the most likely token: sampling at temperature 1 is greedy."""
  from rl_jax.train import rollout
  ids, mask = np.asarray(IDS), np.asarray(MASK)
  greedy = rollout(PARAMS, CFG, ids, mask, jax.random.PRNGKey(3), group_size=2, max_new_tokens=4, temperature=0.0,
                   stop_tokens=())
  nucleus = rollout(PARAMS, CFG, ids, mask, jax.random.PRNGKey(3), group_size=2, max_new_tokens=4, temperature=1.0,
                    top_p=1e-6, stop_tokens=())
  np.testing.assert_array_equal(nucleus.completion, greedy.completion)
  free = rollout(PARAMS, CFG, ids, mask, jax.random.PRNGKey(3), group_size=2, max_new_tokens=4, temperature=1.0,
                 stop_tokens=())
  assert (free.completion != greedy.completion).any()   # without the nucleus the draws differ
