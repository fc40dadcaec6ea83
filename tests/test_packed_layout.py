"""Packed groups (each prompt once, no padding) == the plain [B, P + T] layout: per-token log-probs, entropies,
the loss, the metrics and the gradients of the train step, with and without jit, micro-batches, remat, bfloat16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax import objectives
from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config
from rl_jax.models.llama import _attention
from rl_jax.packing import LAYOUT_SLACK, balanced_fit, choose_layout, first_fit, fit, groups_of, layout_stats, \
    pack_groups, round_up, span_limit, target_width
from rl_jax.loop_extras import TEMPERATURE_KEYS
from rl_jax.prefix_grouper import grouped_attention, key_blocks, packed_logprobs, packed_mask, span_starts
from rl_jax.train import RLBatch, init_state, make_logprob_fn, make_rl_step

CFG = tiny_config(31, max_seq_len=64, qkv_bias=True, qk_norm=True)
EOS = 2
P, T = 7, 6


def make_batch(groups, *, seed=0, shuffle=True, eos=False):
  """groups: [(prompt length, [completion lengths])] → tokens, attn [B, P + T] (left-padded prompts, right-padded
  completions), rows of a group repeated (shuffled over the batch when `shuffle`). eos: completions shorter than
  T end with the EOS token."""
  rng = np.random.default_rng(seed)
  tokens, attn = [], []
  for lp, lengths in groups:
    prompt = rng.integers(3, CFG.vocab_size, lp)
    for n in lengths:
      row, mask = np.zeros(P + T, np.int32), np.zeros(P + T, np.int32)
      row[P - lp:P], mask[P - lp:P + n] = prompt, 1
      row[P:P + n] = rng.integers(3, CFG.vocab_size, n)
      if eos and 0 < n < T:
        row[P + n - 1] = EOS
      tokens.append(row)
      attn.append(mask)
  tokens, attn = np.stack(tokens), np.stack(attn)
  order = rng.permutation(len(tokens)) if shuffle else np.arange(len(tokens))
  return tokens[order], attn[order]


CASES = {
    "ragged": [(5, [6, 2, 4, 1]), (7, [3, 6, 6, 5]), (1, [4, 0, 2, 6])],
    "g1": [(3, [5]), (7, [2]), (2, [6]), (5, [0])],
    "lengths_0_1": [(4, [0, 0, 0]), (6, [1, 1, 0]), (3, [1, 1, 1])],
}
ALL = [g for c in CASES.values() for g in c]    # one batch holding every case (EOS early: eos=True)


def rows_of(tokens, attn, **kw):
  return jax.tree.map(jnp.asarray, pack_groups(tokens, attn, P, **kw))


@pytest.mark.parametrize("jit", [False, True])
def test_packed_logprobs_equal_the_plain_forward(jit):
  params = init_params(CFG, jax.random.PRNGKey(0))
  tokens, attn = make_batch(ALL, eos=True)
  packed = rows_of(tokens, attn)
  fn = lambda p, rows: packed_logprobs(p, CFG, rows, (len(tokens), T))
  logp, ent = (jax.jit(fn) if jit else fn)(params, packed)
  ref_logp, ref_ent = token_logprobs(params, jnp.asarray(tokens), CFG, prompt_len=P, attn_mask=jnp.asarray(attn))
  m = attn[:, P:].astype(bool)
  np.testing.assert_allclose(np.asarray(logp)[m], np.asarray(ref_logp)[m], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent)[m], np.asarray(ref_ent)[m], rtol=1e-5, atol=1e-5)
  assert not np.asarray(logp)[~m].any() and not np.asarray(ent)[~m].any()      # padding stays 0
  assert np.isfinite(np.asarray(logp)).all()


def _step_pair(name, tokens, attn, *, micro_batches=1, with_old=True, cfg=CFG, jit=True, seed=1):
  """(plain, packed) outputs of one sgd(1.0) train step (the parameter change is the gradient) on the same batch."""
  opt = optax.sgd(1.0)
  state = init_state(init_params(cfg, jax.random.PRNGKey(seed)), opt, jax.random.PRNGKey(2))
  k = jax.random.split(jax.random.PRNGKey(seed + 10), 3)
  b = len(tokens)
  cmask = jnp.asarray(attn[:, P:], jnp.float32)
  old = -jax.random.uniform(k[0], (b, T), minval=0.5, maxval=3.0) if with_old else None
  adv = jax.random.normal(k[1], (b,))
  plain = RLBatch(jnp.asarray(tokens), jnp.asarray(attn), cmask, old, adv, rollout_logp=old)
  packed = plain._replace(packed=rows_of(tokens, attn, rows_multiple=micro_batches))
  outs = []
  for layout, batch in ((False, plain), (True, packed)):
    step = make_rl_step(cfg, opt, objectives.get(name), dict(beta=0.0), prompt_len=P,
                        micro_batches=micro_batches, packed=layout, jit=jit)
    outs.append(step(state, batch))
  return outs


def _assert_same_step(outs, rtol=1e-5, atol=1e-6, metric_rtol=None):
  """Same metrics and parameters; `metric_rtol` {key: rtol} for metrics that amplify float32 rounding (the two
  layouts sum in different orders)."""
  (s0, m0), (s1, m1) = outs
  assert set(m0) == set(m1)
  for key in m0:
    np.testing.assert_allclose(m1[key], m0[key], rtol=(metric_rtol or {}).get(key, rtol), atol=atol, err_msg=key)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), s1.params, s0.params)


@pytest.mark.parametrize("jit", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_packed_step_equals_the_plain_step(jit):
  tokens, attn = make_batch(ALL, seed=3, eos=True)
  _assert_same_step(_step_pair("grpo", tokens, attn, jit=jit))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gspo", "hapo", "tis"])   # sequence ratios; entropy; sampler log-probs
def test_packed_step_equals_plain_for_other_objectives_and_micro_batches(name):
  tokens, attn = make_batch(CASES["ragged"] + CASES["g1"], seed=4)
  # HAPO's adaptive-temperature statistics read log H of the batch's smallest entropies (k₋ = 1/|min ĥ|), where
  # the two layouts' float32 rounding (different summation orders) differs by ~1e-5 of the value
  loose = {key: 1e-4 for key in TEMPERATURE_KEYS} if name == "hapo" else None
  _assert_same_step(_step_pair(name, tokens, attn, micro_batches=2, with_old=name != "hapo"), metric_rtol=loose)


@pytest.mark.slow
def test_packed_step_with_remat_and_bfloat16():
  tokens, attn = make_batch(CASES["ragged"], seed=5)
  _assert_same_step(_step_pair("grpo", tokens, attn, cfg=dataclasses.replace(CFG, remat=True)))
  bf16 = dataclasses.replace(CFG, dtype="bfloat16", remat=True)   # same per-token math, bf16 rounding
  _assert_same_step(_step_pair("grpo", tokens, attn, cfg=bf16), rtol=2e-2, atol=2e-3)


def test_packed_logprob_fn_with_micro_batches():
  params = init_params(CFG, jax.random.PRNGKey(0))
  tokens, attn = make_batch(ALL, seed=6)
  plain = make_logprob_fn(CFG, prompt_len=P)(params, jnp.asarray(tokens), jnp.asarray(attn))
  packed = make_logprob_fn(CFG, prompt_len=P, micro_batches=2, packed=True)(
      params, jnp.asarray(tokens), jnp.asarray(attn), rows_of(tokens, attn, rows_multiple=2))
  m = attn[:, P:].astype(bool)
  np.testing.assert_allclose(np.asarray(packed)[m], np.asarray(plain)[m], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="needs the batch's Packed rows"):
    make_logprob_fn(CFG, prompt_len=P, packed=True)(params, jnp.asarray(tokens), jnp.asarray(attn))


def test_layout_by_hand():
  # two groups: prompt [11 12] with completions [21 22] and [31]; prompt [13] with completion []
  tokens = np.array([[0, 11, 12, 21, 22], [0, 11, 12, 31, 0], [0, 0, 13, 0, 0]], np.int32)
  attn = (tokens > 0).astype(np.int32)
  rows = pack_groups(tokens, attn, 3)
  np.testing.assert_array_equal(rows.tokens, [[11, 12, 21, 22, 31, 13, 0, 0]])
  np.testing.assert_array_equal(rows.positions, [[0, 1, 2, 3, 2, 0, 0, 0]])
  np.testing.assert_array_equal(rows.segment, [[1, 1, 1, 1, 1, 2, 0, 0]])
  np.testing.assert_array_equal(rows.member, [[0, 0, 1, 1, 2, 0, 0, 0]])
  np.testing.assert_array_equal(rows.targets, [[21, 22, 31, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(rows.source, [[1, 2, 1, 0, 0, 0, 0, 0]])   # 21 and 31 from 12, 22 from 21
  np.testing.assert_array_equal(rows.dest, [[0, 1, 2, 6, 6, 6, 6, 6]])     # b·T + t, T = 2; 6 = discarded
  assert (rows.prompt_window, rows.completion_window) == (3, 2)            # the plain widths P, T
  np.testing.assert_array_equal(span_starts(jnp.asarray(rows.segment)), [[0, 0, 0, 0, 0, 5, 5, 5]])
  allowed = np.asarray(packed_mask(jnp.asarray(rows.segment), jnp.asarray(rows.member)))[0]
  np.testing.assert_array_equal(allowed[4], [1, 1, 0, 0, 1, 0, 0, 0])     # 31 sees its prompt and itself only
  np.testing.assert_array_equal(allowed[3], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(allowed[5], [0, 0, 0, 0, 0, 1, 0, 0])     # the next group starts afresh
  np.testing.assert_array_equal(allowed[7], [0, 0, 0, 0, 0, 0, 0, 1])     # padding sees itself only
  assert layout_stats(rows, tokens, attn) == {"packed_positions": 8, "plain_positions": 15, "real_tokens": 8,
                                              "distinct_tokens": 6}


def dense_reference(q, k, v, segment, member):
  """softmax(q kᵀ/√hd + mask) v in float64 NumPy, the mask written out pair by pair from its definition: key j is
  seen by query i iff i = j, or j ≤ i in the same span (segment > 0) and j is a prompt token or of i's completion."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  r, s, h, hd = q.shape
  k, v = (np.repeat(x, h // x.shape[2], axis=2) for x in (k, v))
  out = np.zeros_like(q)
  for b in range(r):
    for i in range(s):
      keys = [j for j in range(s) if j == i or (j <= i and segment[b, i] == segment[b, j] > 0
                                                and member[b, j] in (0, member[b, i]))]
      scores = np.einsum("hd,thd->ht", q[b, i], k[b, keys]) / np.sqrt(hd)
      p = np.exp(scores - scores.max(-1, keepdims=True))
      out[b, i] = np.einsum("ht,thd->hd", p / p.sum(-1, keepdims=True), v[b, keys])
  return out.reshape(r, s, h * hd)


LAYOUTS = {   # (groups, rows_multiple): several spans per row, uneven spans, a lone prompt + 1 completion, empty rows
    "mixed": (ALL, 2), "uneven": ([(7, [6, 1]), (1, [1, 6, 6, 6]), (4, [3])], 1), "lone": ([(3, [1])], 1),
    "padding_rows": (CASES["g1"], 4)}


def qkv(r, s, seed=0, hd=8):
  return tuple(jax.random.normal(key, (r, s, n, hd)) for key, n in zip(jax.random.split(jax.random.PRNGKey(seed), 3),
                                                                       (4, 2, 2)))


@pytest.mark.parametrize("gathered", [True, False])   # the CPU path and the accelerators' (`grouped_attention`)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunk,attention,jit", [(3, "full", True), (4, "chunked", False), (0, "full", False),
                                                 (64, "full", True)])
def test_grouped_attention_equals_a_float64_reference(layout, chunk, attention, jit, gathered):
  groups, multiple = LAYOUTS[layout]
  tokens, attn = make_batch(groups, seed=8)
  rows = pack_groups(tokens, attn, P, rows_multiple=multiple)
  q, k, v = qkv(*rows.tokens.shape)
  cfg = dataclasses.replace(CFG, attention=attention)
  fn = lambda q, k, v: grouped_attention(q, k, v, jnp.asarray(rows.segment), jnp.asarray(rows.member),
                                         rows.prompt_window, rows.completion_window, cfg, chunk=chunk,
                                         gathered=gathered)
  got = (jax.jit(fn) if jit else fn)(q, k, v)
  np.testing.assert_allclose(np.asarray(got), dense_reference(q, k, v, rows.segment, rows.member), rtol=1e-5,
                             atol=1e-5)
  if layout == "padding_rows":
    assert not rows.segment[-1].any()                          # a row of padding only


@pytest.mark.parametrize("gathered", [True, False])
def test_grouped_attention_needs_its_windows(gathered):
  # exact at the longest prompt (7) and completion (6) of the batch, not narrower (chunk 2: most blocks start
  # inside a span)
  tokens, attn = make_batch(ALL, seed=8)
  rows = pack_groups(tokens, attn, P, rows_multiple=2)
  q, k, v = qkv(*rows.tokens.shape)
  seg, mem = jnp.asarray(rows.segment), jnp.asarray(rows.member)
  want = dense_reference(q, k, v, rows.segment, rows.member)
  err = lambda lw, w: float(np.abs(np.asarray(grouped_attention(q, k, v, seg, mem, lw, w, CFG, chunk=2,
                                                                gathered=gathered)) - want).max())
  assert err(7, 6) < 1e-5 and err(6, 6) > 1e-3 and err(7, 4) > 1e-3


def test_grouped_attention_takes_precomputed_key_blocks_of_its_chunk_only():
  tokens, attn = make_batch(ALL, seed=8)
  rows = pack_groups(tokens, attn, P, rows_multiple=2)
  q, k, v = qkv(*rows.tokens.shape)
  seg, mem, lw, w = jnp.asarray(rows.segment), jnp.asarray(rows.member), rows.prompt_window, rows.completion_window
  blocks = key_blocks(seg, mem, lw, w, 4)
  np.testing.assert_array_equal(np.asarray(grouped_attention(q, k, v, seg, mem, lw, w, CFG, chunk=4, blocks=blocks)),
                                np.asarray(grouped_attention(q, k, v, seg, mem, lw, w, CFG, chunk=4)))
  with pytest.raises(ValueError, match="key blocks"):
    grouped_attention(q, k, v, seg, mem, lw, w, CFG, chunk=2, blocks=blocks)


@pytest.mark.parametrize("gathered", [True, False])
def test_grouped_attention_gradients_equal_the_dense_masked_attention(gathered):
  tokens, attn = make_batch(LAYOUTS["uneven"][0] + CASES["ragged"], seed=9)
  rows = pack_groups(tokens, attn, P, rows_multiple=2)
  q, k, v = qkv(*rows.tokens.shape, seed=1)
  seg, mem = jnp.asarray(rows.segment), jnp.asarray(rows.member)
  weights = jax.random.normal(jax.random.PRNGKey(5), q.shape[:2] + (q.shape[2] * q.shape[3],))
  grouped = lambda q, k, v: jnp.sum(weights * grouped_attention(q, k, v, seg, mem, rows.prompt_window,
                                                                rows.completion_window, CFG, chunk=5,
                                                                gathered=gathered))
  dense = lambda q, k, v: jnp.sum(weights * _attention(q, k, v, packed_mask(seg, mem), CFG))
  for g, d in zip(jax.jit(jax.grad(grouped, argnums=(0, 1, 2)))(q, k, v), jax.grad(dense, argnums=(0, 1, 2))(q, k, v)):
    assert float(jnp.abs(d).max()) > 0.1
    np.testing.assert_allclose(np.asarray(g), np.asarray(d), rtol=1e-4, atol=1e-5)


def test_bin_packing_and_the_row_length_choice():
  assert first_fit([5, 3, 4, 4], 8) == [[0, 1], [2, 3]]
  assert [round_up(n) for n in (5, 16, 100, 1000, 1025)] == [8, 16, 104, 1024, 1088]
  # spans 9, 7, 5, 4 (25 tokens); row lengths 16, 24, 32: 2·16 = 32 ties 1·32 (the shorter row wins), 2·24 = 48
  assert choose_layout([9, 7, 5, 4]) == (2, 16, [[0, 1], [2, 3]])
  assert choose_layout([9, 7, 5, 4], rows_multiple=4)[:2] == (4, 16)


def test_balanced_fit_takes_rows_first_fit_misses():
  sizes = [5, 4, 4, 3, 3, 3]                                 # 22 tokens: two rows of 11 hold them, 5+3+3 and 4+4+3
  assert len(first_fit(sizes, 11)) == 3                      # first fit: 5+4, 4+3+3, then 3 alone
  assert balanced_fit(sizes, 11, 2) == [[0, 3, 4], [1, 2, 5]]
  assert balanced_fit(sizes, 10, 2) is None
  assert fit(sizes, 11, 2) == [[0, 3, 4], [1, 2, 5]] and fit(sizes, 10, 2) == first_fit(sizes, 10)


def test_known_layouts_are_reused_within_the_slack():
  sizes = [9, 7, 5, 4]                                       # best new layout: 2 x 16 = 32 positions
  assert choose_layout(sizes)[:2] == (2, 16)
  assert LAYOUT_SLACK == 1 / 32                               # 32 · (1 + 1/32) = 33 positions allowed
  assert choose_layout(sizes, known={(1, 33)}) == (1, 33, [[0, 1, 2, 3]])
  assert choose_layout(sizes, known={(1, 34)})[:2] == (2, 16)            # one position too many
  assert choose_layout(sizes, known={(4, 8)})[:2] == (2, 16)             # the 9-token span does not fit a row of 8
  assert choose_layout(sizes, known={(3, 11)})[:2] == (3, 11)
  assert choose_layout(sizes, rows_multiple=2, known={(3, 11)})[:2] == (2, 16)   # 3 rows: not a multiple of 2
  assert choose_layout(sizes, known={(1, 33), (1, 32)})[:2] == (1, 32)   # the smallest known layout first


def test_known_layouts_mean_fewer_compiled_shapes_for_the_same_positions():
  # 100 steps of 8 GSM8K-like groups of 4 (prompts 80-160 tokens, completions log-normal around 170, at most 192)
  def steps(reuse):
    rng, known, shapes, positions, distinct = np.random.default_rng(0), set(), set(), 0, 0
    for _ in range(100):
      tokens, attn = np.zeros((32, 352), np.int32), np.zeros((32, 352), np.int32)
      for i in range(8):
        l = int(rng.integers(80, 161))
        for j in range(4):
          b, n = 4 * i + j, int(min(192, max(1, rng.lognormal(np.log(170), 0.3))))
          tokens[b, 160 - l:160], tokens[b, 160:160 + n], attn[b, 160 - l:160 + n] = 1000 * i + np.arange(l), 5, 1
      rows = pack_groups(tokens, attn, 160, max_span=span_limit(352), known=known if reuse else ())
      known.add(rows.tokens.shape)
      shapes.add((rows.tokens.shape, rows.targets.shape))
      stats = layout_stats(rows, tokens, attn)
      positions, distinct = positions + stats["packed_positions"], distinct + stats["distinct_tokens"]
    return len(shapes), positions / distinct
  (fresh, fresh_ratio), (reused, reused_ratio) = steps(False), steps(True)
  assert reused < fresh and reused_ratio <= fresh_ratio * (1 + LAYOUT_SLACK) and reused_ratio < 1.1


def test_long_groups_split_with_their_prompt_repeated():
  params = init_params(CFG, jax.random.PRNGKey(0))
  tokens, attn = make_batch(ALL, seed=7)
  rows = rows_of(tokens, attn, max_span=P + T)                       # every group in parts of at most one plain row
  seg = np.asarray(rows.segment)
  spans = [int((row == k).sum()) for row in seg for k in range(1, row.max() + 1)]
  assert max(spans) <= P + T < max(len(p) + sum(len(c) for _, c in m) for p, m in groups_of(tokens, attn, P))
  assert layout_stats(rows, tokens, attn)["distinct_tokens"] > layout_stats(pack_groups(tokens, attn, P), tokens,
                                                                            attn)["distinct_tokens"]
  logp, _ = jax.jit(lambda p, r: packed_logprobs(p, CFG, r, (len(tokens), T)))(params, rows)
  ref, _ = token_logprobs(params, jnp.asarray(tokens), CFG, prompt_len=P, attn_mask=jnp.asarray(attn))
  m = attn[:, P:].astype(bool)
  np.testing.assert_allclose(np.asarray(logp)[m], np.asarray(ref)[m], rtol=1e-5, atol=1e-5)


def test_bad_layouts_are_refused():
  tokens = np.array([[5, 6, 7, 8]], np.int32)
  with pytest.raises(ValueError, match="last column to be a real token"):
    pack_groups(tokens, np.array([[1, 0, 1, 1]]), 2)
  with pytest.raises(ValueError, match="right-padded completions"):
    pack_groups(tokens, np.array([[1, 1, 0, 1]]), 2)
  with pytest.raises(ValueError, match="must be"):
    pack_groups(tokens, np.array([[1, 1, 1, 1]]), 4)
  opt = optax.sgd(1.0)
  state = init_state(init_params(CFG, jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(0))
  batch = RLBatch(jnp.asarray(tokens), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 2)), None, jnp.ones((1,)))
  with pytest.raises(ValueError, match="needs batch.packed"):
    make_rl_step(CFG, opt, objectives.grpo, prompt_len=2, packed=True)(state, batch)


@pytest.mark.slow
def test_a_loop_run_packed_equals_the_plain_run(tmp_path, monkeypatch):
  from rl_jax import loop_run
  from rl_jax.experiments import arithmetic_tiny as exp
  packs = []
  monkeypatch.setattr(loop_run, "pack_groups", lambda *a, **k: packs.append(1) or pack_groups(*a, **k))

  def run(packed):
    cfg = exp.Config(digits=1, d_model=32, sft_steps=20, sft_batch=16, rl_steps=2, prompts_per_step=4, group_size=4,
                     epochs=2, minibatches=2, beta=0.05, eval_every=2, eval_size=8, checkpoint_every=0,
                     packed=packed, run_dir=str(tmp_path / str(packed)), progress_bar=False)
    return exp.main(cfg)
  packed = run(True)
  assert len(packs) == 2 * (1 + 2 * 2)     # per step: the π_old and reference forwards' batch, 2 epochs × 2 mini-batches
  plain = run(False)
  assert len(packs) == 10
  assert loop_run.RLConfig().packed is True and exp.Config().packed is False   # the loop's default; arithmetic_tiny's
  assert len(packed["history"]) == len(plain["history"]) == 2
  for a, b in zip(packed["history"], plain["history"]):
    assert a["reward"] == b["reward"] and set(a) == set(b)
    for key in a:
      if not key.endswith("seconds") and key != "tokens_per_s":
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
  assert packed["history"][-1]["kl"] > 0                           # the reference forward ran (β > 0)
  assert packed["accuracy"] == plain["accuracy"]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), packed["params"], plain["params"])


def test_the_static_sizes_that_do_not_change_the_positions_are_rounded_coarsely():
  # N (targets per row) at 1/4 of an octave; the attention windows are the plain widths P, T (each new value
  # compiles), whatever the batch's longest prompt and completion, and never past the row.
  assert [target_width(n) for n in (5, 65, 100, 200, 257)] == [8, 80, 112, 224, 320]
  for groups in (ALL, CASES["lengths_0_1"]):
    rows = pack_groups(*make_batch(groups, seed=8), P)
    assert (rows.prompt_window, rows.completion_window) == (P, T)
  short = pack_groups(np.array([[0, 0, 5, 6]]), np.array([[0, 0, 1, 1]]), 3)      # one span of 2 in a row of 8
  assert short.tokens.shape[1] == 8 and (short.prompt_window, short.completion_window) == (3, 1)
  wide = pack_groups(np.pad(np.array([[5, 6]]), ((0, 0), (18, 0))), np.pad(np.array([[1, 1]]), ((0, 0), (18, 0))),
                     19)
  assert wide.tokens.shape[1] == 8 and wide.prompt_window == 8                     # P = 19 > S = 8


def test_the_packed_shapes_benchmark_counts_shapes_and_restores_the_rounding():
  from rl_jax import packing
  from rl_jax.experiments.benchmarks import packed_shapes_bench as bench
  before = packing.ROW_FINE, packing.TARGET_FINE
  with bench.rounding(16, 16):
    fine = bench.count(steps=4, seed=1)
  assert (packing.ROW_FINE, packing.TARGET_FINE) == before
  coarse = bench.count(steps=4, seed=1)
  for c in (fine, coarse):
    assert 1 <= c["logprob_shapes"] <= 4 and 1 <= c["train_shapes"] <= 8
    assert 1.0 <= c["positions_per_distinct"] <= c["worst"] < 1.5
  assert coarse["positions_per_distinct"] >= fine["positions_per_distinct"]   # coarser sizes never pack tighter here
  fresh = bench.count(steps=4, seed=1, reuse=False)
  assert fresh["train_shapes"] >= coarse["train_shapes"] and fresh["logprob_shapes"] >= coarse["logprob_shapes"]
