"""The RL-step benchmark against tunix's GRPOLearner runs end to end in its --quick mode."""
import math

import pytest

pytest.importorskip("tunix.rl.grpo.grpo_learner", reason="tunix is not installed (pip install google-tunix): "
                    "the peer of this benchmark")

from rl_jax.experiments.benchmarks import rl_step_bench_tunix as bench  # noqa: E402


@pytest.fixture(autouse=True)
def _allow_rank_promotion():
  """tunix's modules broadcast ranks implicitly, also in its rollout thread, so a context manager is not enough."""
  import jax
  before = jax.config.jax_numpy_rank_promotion
  jax.config.update("jax_numpy_rank_promotion", "allow")
  yield
  jax.config.update("jax_numpy_rank_promotion", before)


def _cells(line):
  return [c.strip() for c in line.strip().strip("|").split("|")]


def test_quick_mode_prints_one_row_of_positive_finite_numbers(capsys):
  bench.main(["--quick", "--steps=2"])
  out = capsys.readouterr().out
  lines = [ln for ln in out.splitlines() if ln.startswith("|")]
  assert _cells(lines[0]) == bench.HEADER
  rows = [_cells(ln) for ln in lines[2:3]]
  assert len(rows) == 1 and rows[0][0].startswith("tiny random Llama")
  model, pxg, tokens, *numbers = rows[0]
  case = bench.QUICK["tiny"]
  assert pxg == f"{case.prompts} x {case.group}"
  # tunix masks a sampled pad id out of its completions, so its count may fall a few tokens short
  planned = case.prompts * case.group * case.new_tokens
  assert tokens.split()[0] == str(planned)
  values = [float(x.rstrip("x")) for x in numbers]
  assert len(values) == 5 and all(math.isfinite(v) and v > 0 for v in values)
  jax_s, jax_tps, tunix_s, tunix_tps, ratio = values
  assert jax_tps == pytest.approx(planned / jax_s, rel=0.02)
  assert 0.8 * planned / tunix_s <= tunix_tps <= planned / tunix_s * 1.001
  assert ratio == pytest.approx(jax_tps / tunix_tps, rel=0.02)
  assert "machine:" in out and "google-tunix" in out
  from rl_jax.experiments.benchmarks.rl_step_bench import phase_header
  assert len(lines) == 6 and _cells(lines[3]) == phase_header("tunix")
  phases = _cells(lines[5])
  assert phases[:3] == [model, pxg, tokens.split()[0]] and all(float(c.split()[0]) > 0 for c in phases[3:7])


def test_rejects_unknown_models_and_bad_steps():
  with pytest.raises(ValueError, match="Unknown models"):
    bench.run(("gpt5",), quick=True)
  with pytest.raises(ValueError, match="steps"):
    bench.run(("tiny",), steps=0, quick=True)
