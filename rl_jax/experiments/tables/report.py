"""The command line and the report of every table module: options, mean ± std over seeds, paired
differences, the markdown table with the command, machine, date and wall time that made it, and plots.

`rl_jax.experiments.tables.common` imports these names, so a table module reads them from `common`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import time
from typing import Sequence, Union

import numpy as np

import rl_jax
import rl_jax.machine

RESULTS = pathlib.Path("results/tables")


# ----------------------------------------------------------------------------------------------- CLI

@dataclasses.dataclass(frozen=True)
class Args:
  quick: bool = False
  seeds: tuple = (0, 1, 2)
  out: pathlib.Path = RESULTS
  extra: tuple = ()          # unparsed --key=value pairs, for the module


def parse_args(argv: Sequence[str], keys: Union[Sequence[str], None] = None, doc: str = "") -> Args:
  """--quick, --seeds=0,1,2, --out=DIR; --key=value pairs go to `extra`.

  `keys`: the --key names the caller reads (with `extra_value`); any other --key stops the run before it
  starts, naming the accepted ones (None: no check, for callers that only read `extra`). --help / -h
  prints `doc` (the module's usage) and exits without running anything.
  """
  if "--help" in argv or "-h" in argv:
    print((doc or "").strip() or "Options: --quick, --seeds=0,1,2, --out=DIR, --key=value.")
    raise SystemExit(0)
  quick, seeds, out, extra = False, None, RESULTS, []
  for a in argv:
    if a == "--quick":
      quick = True
    elif a.startswith("--seeds="):
      seeds = tuple(int(x) for x in a.split("=", 1)[1].split(",") if x)
    elif a.startswith("--out="):
      out = pathlib.Path(a.split("=", 1)[1])
    elif a.startswith("--"):
      key = a[2:].partition("=")[0]
      if keys is not None and key not in keys:
        accepted = ", ".join(["--quick", "--seeds", "--out"] + [f"--{k}" for k in keys])
        raise SystemExit(f"Unknown option {a!r}; this table accepts {accepted} (--help for more).")
      extra.append(a)
    else:
      raise SystemExit(f"Unexpected argument {a!r}; use --quick, --seeds=0,1,2, --out=DIR or --key=value.")
  if seeds is None:
    seeds = (0,) if quick else (0, 1, 2)
  if not seeds:
    raise SystemExit("--seeds needs at least one seed.")
  return Args(quick, seeds, out, tuple(extra))


def extra_value(args: Args, key: str, default):
  """Value of --key=value in args.extra, converted to the type of `default`; a bare --key is True for a
  boolean option and an error for any other."""
  for a in args.extra:
    k, eq, v = a[2:].partition("=")
    if k != key:
      continue
    if isinstance(default, bool):
      return (not eq) or v.lower() in ("1", "true", "yes")
    if not eq:
      raise SystemExit(f"--{key} needs a value: --{key}=VALUE.")
    try:
      return type(default)(v)
    except ValueError:
      raise SystemExit(f"--{key}={v}: expected a {type(default).__name__}.") from None
  return default


# ------------------------------------------------------------------------------------------ reporting

def machine() -> str:
  """One line: CPU model and count, jax version and backend, rl_jax version."""
  return f"{rl_jax.machine.describe()}, rl_jax {rl_jax.__version__}"


def mean_std(values: Sequence[float], fmt: str = "{:.3f}") -> str:
  """'m ± s' over seeds (sample std, ddof = 1); one value prints alone; NaNs are dropped (n shown)."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return "n/a"
  if v.size == 1:
    return fmt.format(v[0]) + ("" if len(values) == 1 else " (n=1)")
  s = fmt.format(v.mean()) + " ± " + fmt.format(v.std(ddof=1))
  return s if v.size == len(values) else s + f" (n={v.size})"


def paired_difference(per_seed: dict, name: str, baseline: str, key: str = "accuracy", fmt: str = "{:+.3f}") -> str:
  """Mean ± std over seeds of `key`(name) − `key`(baseline), seed by seed. Every row of a seed starts from
  that seed's warm-up and sees its prompts, so the paired difference leaves out the spread between
  warm-ups that the per-row mean ± std carries. The baseline's own row reads 'baseline'."""
  if name == baseline:
    return "baseline"
  d = [a[key] - b[key] for a, b in zip(per_seed[name], per_seed[baseline])]
  return mean_std(d, fmt).replace("± +", "± ")   # a sign on the mean, not on the std


def warmup_note(acc0: Sequence[float], target: float) -> str:
  """How many seeds' warm-up already reaches the steps-to-target accuracy `target` (their steps-to-target is 0)."""
  k = sum(a >= target for a in acc0)
  return (f"{k} of {len(acc0)} seeds reach {target:.2f} already after the warm-up; their "
          "steps-to-target is 0." if k else f"No seed reaches {target:.2f} after the warm-up.")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


class Report:
  """Collects the table, notes and raw numbers of one module run and writes them under args.out."""

  def __init__(self, name: str, args: Args, argv: Sequence[str]):
    self.name, self.args = name, args
    self.command = "python -m rl_jax.experiments.tables." + name + ("" if not argv else " " + " ".join(argv))
    self.start = time.perf_counter()
    self.date = datetime.date.today().isoformat()
    self.source = None   # set by --retable: the run whose stored numbers this report re-renders
    args.out.mkdir(parents=True, exist_ok=True)

  @property
  def path(self) -> pathlib.Path:
    return self.args.out / self.name

  def write(self, title: str, table: str, notes: Sequence[str], raw: dict) -> str:
    wall = time.perf_counter() - self.start
    if self.source:
      src = self.source
      measured = (f"numbers from `{src['command']}` — {src['machine']}; {src['date']}; wall time "
                  f"{src['wall_s']:.0f} s (re-rendered by `{self.command}` on {self.date})")
    else:
      measured = f"`{self.command}` — {machine()}; {self.date}; wall time {wall:.0f} s"
    text = "\n".join([f"### {title}", "", measured
                      + (" (--quick: smoke-test sizes, not a result)" if self.args.quick else ""), "",
                      table, ""] + [f"- {n}" for n in notes]) + "\n"
    self.path.with_suffix(".md").write_text(text)
    meta = dict(command=self.command, machine=machine(), date=self.date, wall_s=wall, seeds=list(self.args.seeds))
    if self.source:
      meta["source"] = self.source
    self.path.with_suffix(".json").write_text(json.dumps(dict(raw, **meta), indent=1, default=_jsonable))
    print(text)
    print(f"wrote {self.path.with_suffix('.md')}, .json and .png")
    return text


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def curve_style(i: int) -> dict:
  """Colour and line style of the i-th curve: ten colours, then the same colours dashed, dotted, dash-dotted,
  so no two of up to forty curves look alike."""
  import matplotlib.pyplot as plt
  colors = plt.get_cmap("tab10").colors
  return {"color": colors[i % 10], "linestyle": ("-", "--", ":", "-.")[(i // 10) % 4]}


def plot_curves(path: pathlib.Path, curves: dict, *, xlabel: str, ylabel: str, title: str):
  """curves: label -> (x, y mean, y std or None). One line per label with a ±std band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for i, (label, (x, y, s)) in enumerate(curves.items()):
    style = curve_style(i)
    ax.plot(x, y, label=label, lw=1.5, **style)
    if s is not None:
      ax.fill_between(x, np.asarray(y) - s, np.asarray(y) + s, alpha=0.12, color=style["color"])
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
