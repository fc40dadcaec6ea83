"""Ahead-of-time compilation for TPU slices on this CPU host (libtpu, deviceless): slice names map to the
standard topologies, the tiny model's whole GSM8K run compiles for v5p-8 with per-chip memory that adds up,
and micro-batch sizes are picked from compiled memory."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import aot
from rl_jax.models import tiny_config


@pytest.mark.parametrize("name,topology,chips", [
    ("v5p-8", "v5p:2x2x1", 4), ("v5p-32", "v5p:2x2x4", 16), ("v5p-64", "v5p:2x4x4", 32), ("v5p-128", "v5p:4x4x4", 64),
    ("v6e-8", "v6e:2x4", 8), ("v6e-64", "v6e:8x8", 64), ("v5litepod-16", "v5e:4x4", 16), ("v4-32", "v4:2x2x4", 16),
    ("v5p:4x4x8", "v5p:4x4x8", 128)])
def test_slice_names_give_standard_topologies(name, topology, chips):
  assert aot.parse_topology(name)[1:] == (topology, chips)


def test_bad_slice_names_are_refused():
  for bad in ("v5p", "v9-8", "v5p-12", "v5p-7", "tpu:2x2"):
    with pytest.raises(ValueError):
      aot.parse_topology(bad)


def test_tiny_gsm8k_run_compiles_for_v5p_8(tmp_path):
  from rl_jax.experiments import gsm8k_smollm2 as exp
  out = tmp_path / "aot.json"
  cfg = exp.make_config(["--model=tiny-random", "--aot=v5p-8", f"--aot_json={out}", "--minibatches=2", "--mesh=1,-1,1",
                         "--prompts_per_step=4", "--max_new_tokens=32", "--max_prompt_len=64", "--beta=0.1"])
  report = exp.main(cfg)
  assert json.loads(out.read_text())["fits"] is True and report["fits"] is True
  assert report["chips"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert report["packed"] is True     # the loop's default layout, at its most tokens (every completion full length)
  assert set(report["functions"]) == {"sampler", "logprobs", "train_step"}
  model = exp.model_shapes(cfg)
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: __import__("rl_jax.models", fromlist=["init_params"]).init_params(model, jax.random.PRNGKey(0)))))
  res = report["resident"]
  # float32 parameters split over 4 chips (the small norms are replicated: at most a few KiB more), Adam 2×
  assert 4 * n_params / 4 <= res["params_gib"] * 2 ** 30 < 4 * n_params / 4 + 8192
  assert res["opt_state_gib"] == pytest.approx(2 * res["params_gib"], rel=1e-3)
  assert res["reference_gib"] == res["params_gib"]           # beta > 0
  for name, f in report["functions"].items():
    assert f["peak_gib"] == pytest.approx(f["argument_gib"] + f["output_gib"] + f["temp_gib"] - f["alias_gib"])
    assert f["total_gib"] == pytest.approx(f["peak_gib"] + f["resident_other_gib"])
  train = report["functions"]["train_step"]
  # the run's own train step takes the state and writes the new one into its buffers (donated)
  state = res["params_gib"] + res["opt_state_gib"]
  assert train["argument_gib"] >= state and train["output_gib"] >= state
  assert state <= train["alias_gib"] <= min(train["argument_gib"], train["output_gib"])
  est = report["estimate"]
  assert 0 < est["mfu"] < 1 and est["step_seconds"] > 0 and est["peak_flops_per_chip"] == 459e12
  assert "fits=true" in aot.format_report(report)


def tiny_run(k_lp: int, mesh: str = "1,-1,1", devices=None, packed: bool = True):
  """A loop Run of a small model on the 8 CPU devices (abstract weights), with k_lp log-prob micro-batches."""
  from rl_jax import loop
  from rl_jax.models import init_params
  model = tiny_config(512, d_model=64, n_layers=2, max_seq_len=256)
  params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
  cfg = loop.RLConfig(prompts_per_step=16, group_size=4, minibatches=1, epochs=2, mesh=mesh, packed=packed)
  return loop.Run(cfg, model, params, loop.TaskShape(128), logprob_micro_batches=k_lp, devices=devices)


def test_the_train_step_donates_its_state_on_a_tpu_slice():
  """Compiled for v4-8 (4 chips): the loop's train step writes the new state over the one it is given, so the
  compiler reports the whole state (parameters, Adam moments, step, key) aliased and the peak counts it once."""
  pytest.importorskip("libtpu")
  run = tiny_run(1, devices=aot.topology_devices("v4:2x2x1"))
  shapes = aot.RunShapes(sample_rows=64, prompt_len=64, new_tokens=128, train_rows=64, logprob_rows=64)
  mem = aot.compile_memory(*aot._unpack(aot.train_call(run, shapes)))
  state = aot.per_chip_bytes(aot.abstract_state(run)) / aot.GIB
  # at least the state's own bytes (TPU tiles pad the small arrays of a tiny model: the compiled bytes are more)
  assert 0 < state <= mem["alias_gib"] <= min(mem["argument_gib"], mem["output_gib"])
  assert mem["peak_gib"] == pytest.approx(mem["argument_gib"] + mem["output_gib"] + mem["temp_gib"] - mem["alias_gib"])


def test_micro_batches_are_picked_from_compiled_memory():
  """On 8 CPU devices: the picked micro-batch fits the budget and the next larger one, compiled, does not."""
  run = aot.RunShapes(sample_rows=64, prompt_len=64, new_tokens=128, train_rows=64, logprob_rows=64)
  build = lambda k: aot.logprob_call(tiny_run(k), run)
  peaks = {k: aot.compile_memory(*aot._unpack(build(k)))["peak_gib"] for k in (8, 2, 1)}  # 1, 4, 8 rows/shard
  assert peaks[8] < peaks[2] < peaks[1]
  budget = (peaks[2] + peaks[1]) / 2                          # 4 rows per shard fit, 8 do not
  chip = dataclasses.replace(aot.CHIPS["v5p"], hbm_gib=budget / aot.HBM_FRACTION)
  k, mem = aot.pick_micro_batches(build, 8, 0.0, chip, log=lambda *_: None)
  assert k == 2 and mem["peak_gib"] == pytest.approx(peaks[2])
  tiny_chip = dataclasses.replace(chip, hbm_gib=peaks[8] / 2)
  with pytest.raises(ValueError, match="even with 1 row per shard"):
    aot.pick_micro_batches(build, 8, 0.0, tiny_chip, log=lambda *_: None)


def test_roofline_counts_flops_by_hand():
  m = tiny_config(100, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, ffn_dim=16)
  # per layer: q 8·8, k and v 8·4 each, o 8·8, MLP 3·8·16; plus the 8·100 output projection
  assert aot.matmul_params(m) == 2 * (64 + 32 + 32 + 64 + 384) + 800
  run = aot.RunShapes(sample_rows=4, prompt_len=2, new_tokens=2, train_rows=4, logprob_rows=4, old_logp=False)
  chip = aot.CHIPS["v5p"]
  est = aot.roofline(m, run, chip, chips=1, tensor=1)
  n = aot.matmul_params(m)
  fwd = 2 * n * 4 + 4 * 2 * 2 * 4 * 4 * 2           # one row: 2N·S + 4·L·H·hd·S·(S/2)
  train = 4 * 3 * fwd                                # no remat, no accumulation
  assert est["train_seconds"] == pytest.approx(train / chip.peak_flops)
  # remat "full" recomputes the whole forward, "dots" its attention only (4·L·H·hd·S·(S/2) per row)
  for policy, extra in (("full", fwd), ("dots", 4 * 2 * 2 * 4 * 4 * 2)):
    est = aot.roofline(dataclasses.replace(m, remat=True, remat_policy=policy), run, chip, chips=1, tensor=1)
    assert est["train_seconds"] == pytest.approx((train + 4 * extra) / chip.peak_flops)


def test_every_pallas_kernel_compiles_for_tpu():
  """Each kernel's forward and backward lowers through Mosaic (a tpu_custom_call) for one v5p chip, with its
  default (TPU-legal) block shapes."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from rl_jax.kernels.fused_logprobs.ops import fused_logprobs
  from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
  from rl_jax.kernels.tree_prefix.ops import tree_prefix_values
  mesh = Mesh(np.asarray(aot.topology_devices("v5p:2x2x1")[:1]), ("x",))
  arg = lambda shape, dt=jnp.float32: jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, P()))
  cases = {
      "ratio_clip": (jax.value_and_grad(lambda lp, o, a, m: jnp.sum(ratio_clip_loss(lp, o, a, m, impl="pallas")[0])),
                     [arg((16, 256))] * 4),
      "fused_logprobs": (jax.value_and_grad(lambda h, w, t: jnp.sum(fused_logprobs(h, w, t, impl="pallas")[0]),
                                            argnums=(0, 1)), [arg((256, 512)), arg((512, 4096)), arg((256,), jnp.int32)]),
      "tree_prefix": (lambda t, m, r: tree_prefix_values(t, m, r, impl="pallas"),
                      [arg((4, 8, 128), jnp.int32), arg((4, 8, 128)), arg((4, 8))]),
  }
  for name, (fn, args) in cases.items():
    with jax.set_mesh(mesh):
      hlo = jax.jit(fn).lower(*args).compile().as_text()
    assert "tpu_custom_call" in hlo, name


def test_pod_recipe_and_its_refusals(tmp_path):
  from rl_jax.experiments import gsm8k_smollm2 as exp
  from rl_jax.models.published import published_config
  cfg = exp.make_config(["--preset=pod", "--model=qwen2.5-math-7b", f"--run_dir={tmp_path}/run"])
  assert (cfg.prompts_per_step, cfg.group_size, cfg.max_prompt_len, cfg.max_new_tokens) == (128, 8, 1024, 3072)
  assert cfg.objective == "dapo" and cfg.dtype == "bfloat16" and cfg.attention == "chunked" and cfg.micro_batches == 0
  model = exp.model_shapes(cfg)
  assert dataclasses.replace(model, dtype="float32", remat=False, attention="full") == published_config(
      "qwen2.5-math-7b")
  assert model.max_seq_len >= cfg.max_prompt_len + cfg.max_new_tokens and model.remat
  assert model.remat_policy == "full"             # the pod keeps only layer inputs, whatever the CPU default
  assert cfg.mesh == "1,-1,1" and cfg.logprob_micro_batches == 0   # FSDP over the slice, counts picked at start
  with pytest.raises(ValueError, match="hf_folder"):
    exp.main(cfg)
  assert not (tmp_path / "run").exists()            # refused before anything was written


def test_every_experiment_compiles_its_run_for_a_slice(tmp_path):
  """--aot lives in the loop's config: arithmetic_tiny compiles its own run for v5p-8 too; a mesh that leaves
  chips of the slice idle is refused before any compile, and the old mesh spelling is refused by name."""
  from rl_jax import loop
  from rl_jax.experiments import arithmetic_tiny as exp
  tiny = ["--d_model=32", "--prompts_per_step=4", "--group_size=2", "--minibatches=2", "--progress_bar=false"]
  report = exp.main(loop.command_line(exp.Config(), tiny + ["--aot=v5p-8", "--mesh=1,-1,1", f"--aot_json={tmp_path}/r.json"]))
  assert report["fits"] and report["chips"] == 4 and set(report["functions"]) == {"sampler", "logprobs", "train_step"}
  assert json.loads((tmp_path / "r.json").read_text())["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert not (tmp_path / "results").exists()
  with pytest.raises(ValueError, match="over 1 of the 4 chips"):
    exp.main(loop.command_line(exp.Config(), tiny + ["--aot=v5p-8"]))        # the default mesh is one device
  with pytest.raises(ValueError, match="spelled --mesh=data,fsdp,tensor"):
    loop.command_line(exp.Config(), ["--mesh_fsdp=4"])
  with pytest.raises(ValueError, match="give --aot too"):
    loop.command_line(exp.Config(), [f"--aot_json={tmp_path}/r.json"])


def test_auto_micro_batches_are_picked_on_the_run_devices(monkeypatch):
  """micro_batches=0: loop.make_run compiles the run's own functions on its devices and keeps the fewest micro-batches
  whose peak fits the device memory (here a stand-in limit on the 8 CPU devices); CPU, with no limit, gets 1."""
  from rl_jax import loop
  from rl_jax.models import init_params
  shapes = aot.RunShapes(sample_rows=64, prompt_len=64, new_tokens=128, train_rows=64, logprob_rows=64)
  # the plain layout, whose log-prob peaks grow with the micro-batch (the packed layout's barely do here)
  peaks = {k: aot.compile_memory(*aot._unpack(aot.logprob_call(tiny_run(k, packed=False), shapes)))["peak_gib"]
           for k in (2, 1)}
  run = tiny_run(1, packed=False)
  cfg = dataclasses.replace(run.cfg, micro_batches=0, logprob_micro_batches=0)
  params = jax.eval_shape(lambda: init_params(run.model_cfg, jax.random.PRNGKey(0)))
  on_cpu = loop.make_run(cfg, run.model_cfg, params, loop.TaskShape(128), prompt_len=64)
  assert (on_cpu.micro_batches, on_cpu.logprob_micro_batches) == (1, 1)
  resident = aot.resident_gib(run, False)
  budget = (peaks[2] + peaks[1]) / 2 + resident["opt_state_gib"]      # 4 rows per shard fit, 8 do not
  chip = aot.Chip("stand-in", budget / aot.HBM_FRACTION, 0.0, 0.0, 1, 0)
  monkeypatch.setattr(aot, "device_chip", lambda devices: chip)
  picked = loop.make_run(cfg, run.model_cfg, params, loop.TaskShape(128), prompt_len=64)
  assert picked.logprob_micro_batches == 2
  train = aot.compile_memory(*aot._unpack(aot.train_call(picked, shapes)))
  assert aot.fits(train["peak_gib"], 0.0, chip) and 8 % picked.micro_batches == 0


def test_a_tree_rollout_run_compiles_its_tree_sampler_for_a_slice(tmp_path, monkeypatch):
  """--rollout=tree: --aot compiles the tree sampler the loop runs (not the group sampler), and the log-prob
  forward and train step on the tree's rows (whole segments: 2 × 2 tokens for a 3-token answer)."""
  from rl_jax import loop, loop_run
  from rl_jax.experiments import arithmetic_tiny as exp
  called = []
  for name in ("sampler", "tree_sampler"):
    real = getattr(loop_run.Run, name)
    monkeypatch.setattr(loop_run.Run, name, lambda self, *a, _r=real, _n=name: called.append(_n) or _r(self, *a))
  argv = ["--d_model=32", "--prompts_per_step=4", "--group_size=2", "--minibatches=2", "--rollout=tree",
          "--tree_segment_len=2", "--aot=v5p-8", "--mesh=1,-1,1", "--progress_bar=false"]
  report = exp.main(loop.command_line(exp.Config(), argv))
  assert called == ["tree_sampler"] and report["fits"] and report["run"]["rollout"] == "tree"
  assert exp.build(exp.Config())[0].answer_len == 3 and report["run"]["new_tokens"] == 4
  assert report["functions"]["sampler"]["kv_cache_len"] == report["run"]["prompt_len"] + 4
