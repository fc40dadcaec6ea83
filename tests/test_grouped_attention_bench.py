"""The grouped-attention benchmark's layout and arguments (its timings are not tested)."""
import numpy as np
import pytest

from rl_jax.experiments.benchmarks import grouped_attention_bench as bench


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_the_benchmark_layout_spreads_the_groups_over_its_rows(rows):
  seg, mem = bench.layout(rows)
  assert seg.shape == (rows, bench.POSITIONS // rows)
  real = sum(bench.PROMPTS) + len(bench.PROMPTS) * bench.GROUP * bench.NEW
  assert int((seg > 0).sum()) == real
  assert all(set(np.unique(row[row > 0])) == set(range(1, len(bench.PROMPTS) // rows + 1)) for row in seg)
  assert int((mem > 0).sum()) == len(bench.PROMPTS) * bench.GROUP * bench.NEW           # completion tokens
  assert max(bench.PROMPTS) <= bench.PROMPT_WINDOW


def test_the_benchmark_refuses_rows_its_groups_do_not_fill():
  with pytest.raises(ValueError, match="do not fill"):
    bench.layout(8)                                           # a 150-token prompt + 4 x 192 > 896 positions
  with pytest.raises(SystemExit):
    bench.main(["--rows=3"])
