"""The CPU kernels (rl_jax.kernels.cpu), packed-panel dense and decode attention, against float64 NumPy over odd
shapes, eager and jitted; their TPU lowerings free of the custom calls; the build cache key; the fallback when
the library cannot load."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.kernels.cpu import (PANEL, build, ops, pack_input_major_op, pack_output_major_op, pack_panels,
                                pack_panels_input_major, packed_dense, packed_dense_reference)


@pytest.fixture(scope="module")
def kernel():
  """The kernel library loaded; skipped only where no C++ compiler exists outside CI (CI must build it)."""
  if build.compiler() is None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.skip("no C++ compiler")
  assert ops.load(), "the CPU kernel library did not build or load (see the log)"


def _case(m, k, n, seed=0):
  rng = np.random.default_rng(seed)
  x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
  return x, w, x.astype(np.float64) @ w.astype(np.float64).T


def _close(got, want, k):
  """float32 accumulation over k terms: error within a few ulps · √k of the magnitudes summed."""
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=4e-7 * np.sqrt(k) * np.abs(want).max() + 1e-7)


SHAPES = [(1, 5, 7), (7, 33, 100), (8, 64, PANEL), (33, 577, 97), (9, 1, 50), (32, 96, 3 * PANEL + 1)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_packed_dense_matches_float64_eager_and_jitted(kernel, m, k, n):
  x, w, want = _case(m, k, n)
  pw = pack_panels(jnp.asarray(w))
  assert pw.panels.shape == (-(-n // PANEL), k, PANEL) and pw.n == n
  _close(packed_dense(jnp.asarray(x), pw), want, k)
  _close(jax.jit(packed_dense)(jnp.asarray(x), pw), want, k)


@pytest.mark.parametrize("m,k,n", [(32, 96, 3 * PANEL + 1), (7, 33, 100), (1, 5, 7), (9, 577, 50)])
def test_packed_dense_with_rms_norm_matches_float64(kernel, m, k, n):
  """A weight packed with an RMSNorm gain: y = (x / √(mean(x²) + eps) ⊙ g) · Wᵀ from the raw x, against float64
  (rows of very different scales), eagerly, jitted and through the jnp reference; its TPU lowering has no custom
  call."""
  x, w, _ = _case(m, k, n, seed=4)
  rng = np.random.default_rng(5)
  x = x * rng.uniform(0.01, 30.0, (m, 1)).astype(np.float32)
  g = rng.uniform(0.5, 1.5, k).astype(np.float32)
  eps = 1e-5
  x64 = x.astype(np.float64)
  want = (x64 / np.sqrt(np.mean(x64 ** 2, axis=1, keepdims=True) + eps) * g) @ w.astype(np.float64).T
  pw = pack_panels(jnp.asarray(w), jnp.asarray(g), eps)
  assert pw.rms_eps == eps and pw.n == n
  for fn in (packed_dense, jax.jit(packed_dense), packed_dense_reference):
    _close(fn(jnp.asarray(x), pw), want, k)
  traced = jax.jit(packed_dense).trace(jnp.asarray(x), pw)
  assert ops.RMS_TARGET in traced.lower(lowering_platforms=("cpu",)).as_text()
  assert ops.RMS_TARGET not in traced.lower(lowering_platforms=("tpu",)).as_text()
  with pytest.raises(ValueError, match="RMSNorm gain"):
    pack_panels(jnp.asarray(w), jnp.asarray(g))
  with pytest.raises(ValueError, match="RMSNorm gain"):
    pack_panels(jnp.asarray(w), jnp.asarray(g[:-1]), eps)


def test_panels_layout_and_reference():
  """panels[p, k, j] = W[p·48 + j, k], zero past N; the jnp reference (the non-CPU branch) equals x·Wᵀ."""
  x, w, want = _case(3, 4, 50)
  p = np.asarray(pack_panels(jnp.asarray(w)).panels)
  assert p[1, 2, 1] == w[49, 2] and p[0, 3, 5] == w[5, 3] and not p[1, :, 2:].any()
  _close(packed_dense_reference(jnp.asarray(x), pack_panels(jnp.asarray(w))), want, 4)


@pytest.mark.parametrize("k,n", [(4, 50), (33, 3 * PANEL), (577, 97)])
def test_input_major_packing_equals_packing_the_transpose(k, n):
  """pack_panels_input_major(W [K, N], g, eps) == pack_panels(Wᵀ, g, eps) bit for bit (with and without a gain)."""
  rng = np.random.default_rng(6)
  w, g = rng.normal(size=(k, n)).astype(np.float32), rng.uniform(0.5, 1.5, k).astype(np.float32)
  for args in ((), (jnp.asarray(g), 1e-6)):
    got, want = pack_panels_input_major(jnp.asarray(w), *args), pack_panels(jnp.asarray(w.T), *args)
    assert (got.n, got.rms_eps) == (want.n, want.rms_eps) and got.panels.shape == want.panels.shape
    np.testing.assert_array_equal(np.asarray(got.panels), np.asarray(want.panels))
  assert np.asarray(pack_panels_input_major(jnp.asarray(w)).panels)[0, 2, 1] == w[2, 1]   # panels[p, k, j] = W[k, 48p + j]
  with pytest.raises(ValueError, match="RMSNorm gain"):
    pack_panels_input_major(jnp.asarray(w), jnp.asarray(g))


def _same_packing(got, want):
  assert (got.n, got.rms_eps) == (want.n, want.rms_eps) and got.panels.shape == want.panels.shape
  np.testing.assert_array_equal(np.asarray(got.panels), np.asarray(want.panels))


@pytest.mark.parametrize("k,widths", [(3, (50,)), (33, (PANEL, 2 * PANEL)), (17, (64, 32, 32)), (577, (97, 5, 200))])
def test_packing_kernel_equals_the_jnp_input_major_packing(kernel, k, widths):
  """pack_input_major_op(ws, g, eps[, layer]) == pack_panels_input_major(concatenate(ws), g, eps) bit for bit:
  sources whose widths are no multiple of 48 (panels straddling two or three sources), with and without a gain
  (negative and fractional entries), one layer of stacked [L, K, N_i] weights, eager and jitted."""
  rng = np.random.default_rng(11)
  stacked = [jnp.asarray(rng.normal(size=(3, k, n)).astype(np.float32)) for n in widths]
  gains = jnp.asarray(rng.uniform(-1.5, 1.5, (3, k)).astype(np.float32))
  for layer in (None, 2):
    ws = stacked if layer is not None else [w[1] for w in stacked]
    g = gains if layer is not None else gains[1]
    for norm, eps in ((None, None), (g, 1e-6)):
      want = pack_panels_input_major(jnp.concatenate([w[1 if layer is None else layer] for w in stacked], axis=1),
                                     None if norm is None else gains[1 if layer is None else layer], eps)
      _same_packing(pack_input_major_op(ws, norm, eps, layer), want)
      _same_packing(jax.jit(lambda ws, norm: pack_input_major_op(ws, norm, eps, layer))(ws, norm), want)


@pytest.mark.parametrize("n,k", [(50, 3), (3 * PANEL, 32), (97, 577), (1, 16)])
def test_packing_kernel_equals_the_jnp_output_major_packing(kernel, n, k):
  """pack_output_major_op(W, g, eps) == pack_panels(W, g, eps) bit for bit (K not a multiple of the 16-column
  transpose tile, N not a multiple of 48), with and without a gain, eager and jitted; special values pass as
  they are (NaN, ±inf, −0, subnormals)."""
  rng = np.random.default_rng(12)
  w = rng.normal(size=(n, k)).astype(np.float32)
  w.flat[:4] = [np.nan, -np.inf, -0.0, 1e-40][:w.size]
  g = rng.uniform(-1.5, 1.5, k).astype(np.float32)
  for norm, eps in ((None, None), (jnp.asarray(g), 1e-5)):
    want = pack_panels(jnp.asarray(w), norm, eps)
    _same_packing(pack_output_major_op(jnp.asarray(w), norm, eps), want)
    _same_packing(jax.jit(lambda w, norm: pack_output_major_op(w, norm, eps))(jnp.asarray(w), norm), want)


def test_packing_kernel_refuses_bad_inputs_and_lowers_for_tpu_without_the_custom_call(kernel):
  w = jnp.ones((2, 8, 20))
  for bad, match in [(lambda: pack_input_major_op([w[0], jnp.ones((7, 4))]), "same leading axes"),
                     (lambda: pack_input_major_op([w], layer=2), "layer in"),
                     (lambda: pack_input_major_op([w[0].astype(jnp.bfloat16)]), "float32"),
                     (lambda: pack_input_major_op([w[0]], jnp.ones(8)), "RMSNorm gain"),
                     (lambda: pack_input_major_op([w], jnp.ones(8), 1e-5, layer=0), "RMSNorm gain"),
                     (lambda: pack_output_major_op(w), r"\[N, K\]"),
                     (lambda: pack_output_major_op(w[0], jnp.ones(8), 1e-5), "RMSNorm gain")]:
    with pytest.raises(ValueError, match=match):
      bad()
  for fn, target in [(lambda w: pack_input_major_op([w, w], layer=1).panels, ops.PACK_INPUT_TARGET),
                     (lambda w: pack_output_major_op(w[0]).panels, ops.PACK_OUTPUT_TARGET)]:
    traced = jax.jit(fn).trace(w)
    assert target in traced.lower(lowering_platforms=("cpu",)).as_text()
    assert target not in traced.lower(lowering_platforms=("tpu",)).as_text()


def test_tpu_lowering_has_no_custom_call_and_cpu_lowering_has_it(kernel):
  x, w, _ = _case(4, 8, 20)
  traced = jax.jit(packed_dense).trace(jnp.asarray(x), pack_panels(jnp.asarray(w)))
  assert ops.TARGET in traced.lower(lowering_platforms=("cpu",)).as_text()
  assert ops.TARGET not in traced.lower(lowering_platforms=("tpu",)).as_text()


def test_bad_inputs_are_refused_before_the_call(kernel):
  pw = pack_panels(jnp.ones((10, 6)))
  with pytest.raises(ValueError, match="float32 x"):
    packed_dense(jnp.ones((2, 5)), pw)
  with pytest.raises(ValueError, match="float32 x"):
    packed_dense(jnp.ones((2, 6), jnp.bfloat16), pw)


def test_cache_key_changes_with_source_flags_compiler_and_cpu(monkeypatch, tmp_path):
  monkeypatch.setenv("RL_JAX_KERNEL_CACHE", str(tmp_path))
  base = ("int f();", ("-O3",), "g++ 12", "avx512f")
  path = build.library_path("k", *base)
  assert path.parent == tmp_path and path == build.library_path("k", *base)
  for i, other in enumerate(("int g();", ("-O2",), "g++ 13", "avx2")):
    changed = list(base)
    changed[i] = other
    assert build.library_path("k", *changed) != path


def test_cache_key_covers_the_shared_header(monkeypatch, tmp_path):
  """An edit to a header beside the sources changes the text every library's key is computed from."""
  monkeypatch.setattr(build, "SOURCE_DIR", tmp_path)
  (tmp_path / "k.cc").write_text('#include "common.h"\nint f() { return g(); }\n')
  (tmp_path / "common.h").write_text("inline int g() { return 1; }\n")
  before = build.source_text("k")
  (tmp_path / "common.h").write_text("inline int g() { return 2; }\n")
  assert build.source_text("k") != before and "return 2" in build.source_text("k")
  assert build.library_path("k", before, ("-O3",), "g++", "cpu") != build.library_path(
      "k", build.source_text("k"), ("-O3",), "g++", "cpu")


def test_wheel_ships_every_kernel_source_and_header():
  """Each non-Python file the build compiles from (rl_jax/kernels/cpu/*.cc, *.h) matches a package-data pattern."""
  import fnmatch
  import tomllib
  from pathlib import Path
  root = Path(__file__).resolve().parents[2]
  patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
  sources = [p.name for p in build.SOURCE_DIR.iterdir() if p.suffix in (".cc", ".h")]
  assert {".cc", ".h"} <= {Path(n).suffix for n in sources}
  assert all(any(fnmatch.fnmatch(n, pat) for pat in patterns) for n in sources), (sources, patterns)


def test_failed_build_or_env_switch_falls_back_with_one_log_line(monkeypatch, tmp_path, caplog):
  monkeypatch.setenv("RL_JAX_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "false")             # a "compiler" that always fails
  with caplog.at_level(logging.WARNING, logger="rl_jax.kernels.cpu"):
    assert ops._try_load() is False
  assert len(caplog.records) == 1 and "unavailable" in caplog.records[0].getMessage()
  assert not list(tmp_path.iterdir())             # no partial file left behind
  monkeypatch.setenv(ops.ENV, "0")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="rl_jax.kernels.cpu"):
    assert ops._try_load() is False
  assert len(caplog.records) == 1 and "disabled" in caplog.records[0].getMessage()


@pytest.mark.parametrize("flags", ["", "--xla_cpu_multi_thread_eigen=false"])
def test_split_over_threads_or_single_threaded(kernel, monkeypatch, flags):
  """Panels split over XLA's intra-op threads, or one thread when XLA's matmuls are made single-threaded."""
  monkeypatch.setenv("XLA_FLAGS", flags)
  assert ops.max_threads() == (1 if flags else 0)
  x, w, want = _case(17, 40, 5 * PANEL - 3, seed=1)
  _close(packed_dense(jnp.asarray(x), pack_panels(jnp.asarray(w))), want, 40)


def _attention_case(b, k, g, hd, s, seed=0):
  rng = np.random.default_rng(seed)
  q = (0.3 * rng.standard_normal((b, k, g, hd))).astype(np.float32)
  keys, values = (rng.standard_normal(shape).astype(np.float32) for shape in ((b, k, hd, s), (b, k, s, hd)))
  bias = np.where(rng.random((b, s)) < 0.3, -1e30, 0.0).astype(np.float32)
  bias[:, -1] = 0.0
  if b > 1:
    bias[1] = -1e30                                  # a row with every slot masked: uniform, as XLA's softmax
  scores = np.einsum("bkgd,bkds->bkgs", q.astype(np.float64), keys) + bias[:, None, None, :]
  p = np.exp(scores - scores.max(-1, keepdims=True))
  want = np.einsum("bkgs,bksd->bkgd", p / p.sum(-1, keepdims=True), values)
  return tuple(map(jnp.asarray, (q, keys, values, bias))), want


@pytest.mark.parametrize("b,k,g,hd,s", [(1, 1, 1, 16, 1), (2, 3, 3, 64, 264), (3, 2, 4, 20, 37), (2, 1, 7, 8, 80),
                                        (4, 2, 2, 128, 17)])
def test_decode_attention_matches_float64(kernel, b, k, g, hd, s):
  """Cache attention (GQA groups of 1–7 query heads, hd and S not multiples of 16, masked slots) within float32
  rounding of a float64 softmax: eager, jitted, and the jnp reference the non-CPU branch runs."""
  args, want = _attention_case(b, k, g, hd, s)
  for fn in (ops.decode_attention, jax.jit(ops.decode_attention), ops.decode_attention_reference):
    np.testing.assert_allclose(np.asarray(fn(*args)), want, rtol=0, atol=2e-5 * np.sqrt(s))


def test_decode_attention_lowers_for_tpu_without_the_custom_call_and_refuses_bad_shapes(kernel):
  args, _ = _attention_case(2, 1, 2, 16, 9)
  traced = jax.jit(ops.decode_attention).trace(*args)
  assert ops.ATTENTION_TARGET in traced.lower(lowering_platforms=("cpu",)).as_text()
  assert ops.ATTENTION_TARGET not in traced.lower(lowering_platforms=("tpu",)).as_text()
  q, keys, values, bias = args
  with pytest.raises(ValueError, match="decode_attention wants"):
    ops.decode_attention(q, keys, values[:, :, :-1], bias)
  with pytest.raises(ValueError, match="decode_attention wants"):
    ops.decode_attention(q, keys.astype(jnp.bfloat16), values, bias)


def _update_case(b, k, g, hd, s, slot, seed=0):
  """Operands of decode_attention_update and its float64 NumPy result: RoPE (half-split) of q and k from the
  angles' cos/sin, q scaled, k and v written at each row's slot (none outside [0, S)), softmax attention."""
  rng = np.random.default_rng(seed)
  h = k * g
  qkv = rng.standard_normal((b, (h + 2 * k) * hd)).astype(np.float32)
  angles = rng.uniform(0, 50, (b, hd // 2))
  cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
  keys, values = (rng.standard_normal(shape).astype(np.float32) for shape in ((b, k, hd, s), (b, k, s, hd)))
  bias = np.where(rng.random((b, s)) < 0.3, -1e30, 0.0).astype(np.float32)
  slots = np.broadcast_to(np.asarray(slot), (b,))
  slots = np.where(slots < 0, slots + s, slots)       # NumPy indexing: −1 is the last slot
  bias[np.arange(b), np.clip(slots, 0, s - 1)] = 0.0
  x, c, sn = qkv.astype(np.float64), cos.astype(np.float64)[:, None], sin.astype(np.float64)[:, None]
  def rot(a):                                        # a [B, N, hd]
    a1, a2 = a[..., :hd // 2], a[..., hd // 2:]
    return np.concatenate([a1 * c - a2 * sn, a2 * c + a1 * sn], -1)
  q = rot(x[:, :h * hd].reshape(b, h, hd)) / np.sqrt(hd)
  kn, vn = rot(x[:, h * hd:(h + k) * hd].reshape(b, k, hd)), x[:, (h + k) * hd:].reshape(b, k, hd)
  k64, v64 = keys.astype(np.float64), values.astype(np.float64)
  for r in range(b):
    if 0 <= slots[r] < s:
      k64[r, :, :, slots[r]], v64[r, :, slots[r], :] = kn[r], vn[r]
  scores = np.einsum("bkgd,bkds->bkgs", q.reshape(b, k, g, hd), k64) + bias[:, None, None, :]
  p = np.exp(scores - scores.max(-1, keepdims=True))
  out = np.einsum("bkgs,bksd->bkgd", p / p.sum(-1, keepdims=True), v64).reshape(b, h * hd)
  args = tuple(map(jnp.asarray, (qkv, cos, sin, np.asarray(slot, np.int32), bias, keys, values)))
  return args, (out, k64, v64)


@pytest.mark.parametrize("b,k,g,hd,s,slot", [(2, 3, 3, 64, 264, 100), (3, 2, 4, 20, 37, [0, 36, 5]),
                                             (1, 1, 1, 16, 1, 0), (4, 1, 7, 8, 80, [3, 79, 200, -1])])
def test_decode_attention_update_matches_float64(kernel, b, k, g, hd, s, slot):
  """RoPE of q and k, the cache write at a shared or per-row slot (one past the end: no write; −1: the last
  slot) and the attention, in one kernel: eager, jitted with the caches donated, and the jnp reference."""
  args, (want, want_k, want_v) = _update_case(b, k, g, hd, s, slot)
  scale = 1.0 / np.sqrt(hd)
  jitted = jax.jit(ops.decode_attention_update, static_argnums=(7, 8), donate_argnums=(5, 6))
  for fn in (ops.decode_attention_update, jitted, ops.decode_attention_update_reference):
    a = list(args)
    if fn is ops.decode_attention_update_reference:
      a[3] = ops.row_slots(a[3], b, s)
    a[5], a[6] = jnp.copy(a[5]), jnp.copy(a[6])   # the caches are updated in place (donated when jitted)
    out, keys, values = fn(*a, g * k, scale)
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=2e-5 * np.sqrt(s))
    np.testing.assert_allclose(np.asarray(keys), want_k, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(values), want_v, rtol=0, atol=0)


def test_decode_attention_update_aliases_the_cache_and_lowers_for_tpu_without_it(kernel):
  """The caches are results aliased to their operands (no copy when donated), the TPU lowering has no custom
  call, bad operands are refused before the call."""
  args, _ = _update_case(2, 1, 2, 16, 9, 3)
  fn = jax.jit(ops.decode_attention_update, static_argnums=(7, 8), donate_argnums=(5, 6))
  traced = fn.trace(*args, 2, 0.25)
  cpu = traced.lower(lowering_platforms=("cpu",))
  assert ops.UPDATE_TARGET in cpu.as_text() and "output_operand_aliases" in cpu.as_text()
  hlo = cpu.compile().as_text()
  assert " copy(" not in hlo, hlo                 # donated: the kernel writes the caches themselves
  assert ops.UPDATE_TARGET not in traced.lower(lowering_platforms=("tpu",)).as_text()
  qkv, cos, sin, slot, bias, keys, values = args
  with pytest.raises(ValueError, match="decode_attention_update wants"):
    ops.decode_attention_update(qkv[:, :-1], cos, sin, slot, bias, keys, values, 2, 0.25)
  with pytest.raises(ValueError, match="decode_attention_update wants"):
    ops.decode_attention_update(qkv, cos, sin, slot.astype(jnp.float32), bias, keys, values, 2, 0.25)
  with pytest.raises(ValueError, match="decode_attention_update wants"):
    ops.decode_attention_update(qkv, cos, sin, slot, bias, keys, values, 3, 0.25)
