"""Datasets as TFDS array_record data sources (random access, no TensorFlow).

    from rl_jax import data
    test = data.load("gsm8k", "test")        # builds once into data_dir, then reads
    len(test), test[0]["problem"], test[0]["answer"]

Names: gsm8k, math500, aime24, amc23, minerva_math, svamp, asdiv, mawps and arithmetic_1d/2d/3d,
countdown (generated). The math sets come from the data folder (TFDS's manual dir: `manual_dir`, else
$RL_JAX_DATA_DIR, else ../shared/data next to a checkout) when it holds them, else from their published
sources, downloaded once and checked against their SHA-256 (`rl_jax.data.sources`). Records are dicts
of str: id, problem, answer, solution.

`python -m rl_jax.data prepare [name ...]` prepares every math set (or the named ones) and checks each
split's row count against the published one.
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional, Sequence

from rl_jax.data.records import FILES, default_root, read
from rl_jax.data.sources import SOURCES, DataUnavailableError

SYNTHETIC = ("arithmetic_1d", "arithmetic_2d", "arithmetic_3d", "countdown")


def names() -> list[str]:
  return sorted(FILES) + list(SYNTHETIC)


def default_data_dir() -> pathlib.Path:
  """Where prepared datasets live: $RL_JAX_TFDS_DIR, else ~/.cache/rl_jax/tfds."""
  return pathlib.Path(os.environ.get("RL_JAX_TFDS_DIR", pathlib.Path.home() / ".cache" / "rl_jax" / "tfds"))


class DataSource(Sequence):
  """Random access to decoded records (bytes → str) over a TFDS array_record data source."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if not -len(self) <= i < len(self):
      raise IndexError(i)
    row = self._source[i % len(self)]
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()}


def builder(name: str, *, data_dir=None):
  """The TFDS builder for `name` (not yet prepared)."""
  from rl_jax.data.builders import RlJaxMath, RlJaxSynthetic
  if name not in names():
    raise ValueError(f"Unknown dataset {name!r}; choose from {names()}.")
  cls = RlJaxSynthetic if name in SYNTHETIC else RlJaxMath
  return cls(config=name, data_dir=str(data_dir or default_data_dir()), file_format="array_record")


def load(name: str, split: str = "test", *, data_dir=None, manual_dir=None, limit: Optional[int] = None):
  """Prepares `name` once (into data_dir) and returns its `split` as a DataSource (first `limit` rows if set)."""
  import tensorflow_datasets as tfds
  b = builder(name, data_dir=data_dir)
  if split not in b.info.splits.keys() and b.info.splits:
    raise ValueError(f"{name} has splits {sorted(b.info.splits.keys())}, not {split!r}.")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir or default_root())))
  if split not in b.info.splits:
    raise ValueError(f"{name} has splits {sorted(b.info.splits.keys())}, not {split!r}.")
  source = DataSource(b.as_data_source(split=split))
  return source if limit is None else source[:limit]


__all__ = ["DataSource", "DataUnavailableError", "FILES", "SOURCES", "SYNTHETIC", "builder", "default_data_dir",
           "default_root", "load", "names", "read"]
