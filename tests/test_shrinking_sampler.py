"""The shrinking static sampler (finished rows dropped between buckets, early end) == the full-batch sampler row by
row (same rng): tokens, masks and log-probs; its batch sizes and compile count stay bounded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import sampling
from rl_jax.models import init_params, tiny_config
from rl_jax.sampling import generate, generate_shrinking, row_sizes, shrunk_rows

CFG = tiny_config(23, max_seq_len=32)
PARAMS = init_params(CFG, jax.random.PRNGKey(0))
IDS = jnp.asarray([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [0, 9, 9, 1, 2], [0, 0, 0, 4, 4], [1, 2, 3, 4, 5],
                   [0, 0, 0, 0, 8], [6, 5, 4, 3, 2]], jnp.int32)
MASK = (jnp.arange(5)[None, :] >= jnp.argmax(IDS > 0, axis=1)[:, None]).astype(jnp.int32)


def test_row_sizes_and_kept_rows_by_hand():
  assert row_sizes(1) == [1]
  assert row_sizes(7) == [1, 2, 3, 4, 6, 7]
  assert row_sizes(32) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
  done = np.array([1, 0, 1, 1, 0, 1, 0, 1], bool)       # 3 live rows of 8 → size 3, no finished row needed
  np.testing.assert_array_equal(shrunk_rows(done, row_sizes(8)), [1, 4, 6])
  done = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)       # 5 live → size 6: the first finished row joins them
  np.testing.assert_array_equal(shrunk_rows(done, row_sizes(8)), [0, 1, 3, 4, 6, 7])
  assert shrunk_rows(np.zeros(8, bool), row_sizes(8)) is None    # every row live: nothing to drop


@pytest.fixture
def batch_sizes(monkeypatch):
  """Records the batch size of every bucket the shrinking sampler decodes."""
  seen = []
  inner = sampling._bucket_jit

  def spy(w, cfg, carry, **kw):
    seen.append(carry.done.shape[0])
    return inner(w, cfg, carry, **kw)
  monkeypatch.setattr(sampling, "_bucket_jit", spy)
  return seen


CASES = [dict(temperature=1.5, stop_tokens=(3, 4), group_size=2), dict(temperature=0.8, top_p=0.9, stop_tokens=(3,)),
         dict(temperature=0.0, stop_tokens=(5,))]


@pytest.mark.parametrize("kw", CASES)
def test_each_row_equals_the_full_batch_sampler(kw, batch_sizes):
  full = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(7), max_new_tokens=8, decode_block=3, shrink=False, **kw)
  small = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(7), max_new_tokens=8, decode_block=3, **kw)
  np.testing.assert_array_equal(np.asarray(small.tokens), np.asarray(full.tokens))
  np.testing.assert_array_equal(np.asarray(small.mask), np.asarray(full.mask))
  np.testing.assert_allclose(np.asarray(small.logp), np.asarray(full.logp), atol=1e-5)
  lengths = np.asarray(full.mask).sum(1)
  n = IDS.shape[0] * kw.get("group_size", 1)
  assert lengths.min() < lengths.max()                  # rows finish at different times
  assert batch_sizes[0] == n and min(batch_sizes) < n   # so the batch shrank after the first bucket
  assert all(s in row_sizes(n) for s in batch_sizes)
  assert batch_sizes == sorted(batch_sizes, reverse=True)


@pytest.mark.slow
def test_eager_shrinking_equals_the_jitted_full_batch_sampler():
  kw = dict(max_new_tokens=3, temperature=1.5, stop_tokens=tuple(range(12)), decode_block=1)
  full = generate(PARAMS, CFG, IDS[:4], MASK[:4], jax.random.PRNGKey(3), shrink=False, **kw)
  with jax.disable_jit():
    eager = generate_shrinking(PARAMS, CFG, IDS[:4], MASK[:4], jax.random.PRNGKey(3), cpu_kernels=False, **kw)
  lengths = np.asarray(full.mask).sum(1)
  assert lengths.min() < lengths.max()                  # a row stopped first, so a later bucket ran on fewer rows
  np.testing.assert_array_equal(np.asarray(eager.tokens), np.asarray(full.tokens))
  np.testing.assert_allclose(np.asarray(eager.logp), np.asarray(full.logp), atol=1e-5)


def test_sampling_ends_once_every_row_has_stopped(batch_sizes):
  every = tuple(range(CFG.vocab_size))                  # the first token stops every row
  kw = dict(max_new_tokens=8, decode_block=3, temperature=1.5, stop_tokens=every)
  small = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(1), **kw)
  full = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(1), shrink=False, **kw)
  assert batch_sizes == [IDS.shape[0]]                  # one bucket, then nothing left to decode
  np.testing.assert_array_equal(np.asarray(small.mask), np.asarray(full.mask))
  np.testing.assert_array_equal(np.asarray(small.mask).sum(1), 1)
  np.testing.assert_array_equal(np.asarray(small.tokens), np.asarray(full.tokens))


def test_compiles_are_bounded_by_buckets_and_row_sizes():
  kw = dict(max_new_tokens=8, decode_block=3, temperature=1.5, stop_tokens=(3, 4))
  sampling._bucket_jit.clear_cache()                    # counted from empty: other tests may have run these buckets
  before = sampling._bucket_jit._cache_size()
  generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(11), **kw)
  first = sampling._bucket_jit._cache_size() - before
  assert 1 <= first <= 3                                # sizes only fall: at most one compile per bucket
  for seed in range(12, 14):
    generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(seed), **kw)
  assert sampling._bucket_jit._cache_size() - before <= 3 * len(row_sizes(IDS.shape[0]))
  again = sampling._bucket_jit._cache_size()
  generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(11), **kw)
  assert sampling._bucket_jit._cache_size() == again    # a repeated call compiles nothing
