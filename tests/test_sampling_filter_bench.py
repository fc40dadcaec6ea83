"""The nucleus-filter benchmark runs in its --quick mode, and both of its paths agree (it raises otherwise)."""
from rl_jax.experiments.benchmarks import sampling_filter_bench


def test_quick_mode_prints_a_row_per_case(capsys):
  sampling_filter_bench.main(["--quick", "--repeats=2"])
  out = capsys.readouterr().out
  rows = [ln for ln in out.splitlines() if ln.startswith("| 4 ")]
  assert len(rows) == 2
  peaked, flat = ([c.strip() for c in r.strip("|").split("|")] for r in rows)
  assert peaked[2] == "peaked" and int(peaked[3]) < 256      # fast path
  assert flat[2] == "flat" and int(flat[3]) > 256            # fallback path
  assert all(float(c.rstrip("x")) > 0 for c in peaked[4:] + flat[4:])
