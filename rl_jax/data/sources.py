"""Where each math data set is published, and getting it when no local copy exists.

Every file is pinned to a commit of the repository that publishes it, with its size, SHA-256 and row
count (the published files are byte-identical to the copies the tests read, so the checksums were
computed from those):

* GSM8K (train 7473, test 1319): github.com/openai/grade-school-math, `grade_school_math/data/`.
* MATH-500 (500): github.com/openai/prm800k, `prm800k/math_splits/test.jsonl`, a Git LFS file, so
  it comes from GitHub's media host.
* AIME24, AMC23, Minerva math, SVAMP, ASDiv, MAWPS: github.com/QwenLM/Qwen2.5-Math,
  `evaluation/data/<name>/test.jsonl`.

`resolve(name, split, local_root, cache_root)` returns the folder to read `FILES[name][split]` from:
the local data folder if it holds the file, else the download cache, filled on first use. A download
is one attempt per URL (no silent retries) and must match its size and SHA-256 before it is moved into
place; when neither way gives the file, `DataUnavailableError` names both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import urllib.request

from rl_jax.data.records import FILES


@dataclasses.dataclass(frozen=True)
class Source:
  url: str
  sha256: str
  size: int
  rows: int


_GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/"
_QWEN = "https://raw.githubusercontent.com/QwenLM/Qwen2.5-Math/a45202bd16f1ec06f433442dc1152d0074773465/evaluation/data/"
_PRM800K = "https://media.githubusercontent.com/media/openai/prm800k/7ecc794703b2877f63226f2477a49b34f9b25163/prm800k/"

SOURCES = {
    ("gsm8k", "train"): Source(_GSM8K + "train.jsonl",
                               "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206, 7473),
    ("gsm8k", "test"): Source(_GSM8K + "test.jsonl",
                              "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738, 1319),
    ("math500", "test"): Source(_PRM800K + "math_splits/test.jsonl",
                                "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132", 446564, 500),
    ("aime24", "test"): Source(_QWEN + "aime24/test.jsonl",
                               "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac", 156944, 30),
    ("amc23", "test"): Source(_QWEN + "amc23/test.jsonl",
                              "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4", 27631, 40),
    ("minerva_math", "test"): Source(_QWEN + "minerva_math/test.jsonl",
                                     "0e656b430d3a0a1dab6aa853f453ba3805e28e2cabe4fc72486a897cc09d8ba2", 247267, 272),
    ("svamp", "test"): Source(_QWEN + "svamp/test.jsonl",
                              "d0826ff1264f3860e46fc4e71db9e31d2d188960db87090e22677f9493e67a0d", 280029, 1000),
    ("asdiv", "test"): Source(_QWEN + "asdiv/test.jsonl",
                              "5759580385e706f961a30d4c07d6925b35c3f7c86d6c50bc413957169693dad2", 613636, 2215),
    ("mawps", "test"): Source(_QWEN + "mawps/test.jsonl",
                              "00ffe31161be8623a3d36741830edbba87a3aee0109f693810fe40b9d5d91b8b", 402636, 2065),
}


class DataUnavailableError(FileNotFoundError):
  """A data set is neither in the local data folder nor downloadable."""


def source(name: str, split: str) -> Source:
  if (name, split) not in SOURCES:
    raise ValueError(f"No published source for {name!r} split {split!r}; known: {sorted(SOURCES)}.")
  return SOURCES[(name, split)]


def sha256_of(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def fetch(src: Source, dest, *, timeout: float = 60.0) -> pathlib.Path:
  """Downloads src.url to dest (through dest.part) once; the size and SHA-256 must match before the rename."""
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  part = dest.with_name(dest.name + f".part{os.getpid()}")
  try:
    with urllib.request.urlopen(src.url, timeout=timeout) as response, open(part, "wb") as out:
      for block in iter(lambda: response.read(1 << 20), b""):
        out.write(block)
    size, digest = part.stat().st_size, sha256_of(part)
    if (size, digest) != (src.size, src.sha256):
      raise ValueError(f"{src.url} gave {size} bytes with SHA-256 {digest}; expected {src.size} bytes with "
                       f"SHA-256 {src.sha256}. Nothing was kept.")
    os.replace(part, dest)
  finally:
    part.unlink(missing_ok=True)
  return dest


def _cached(src: Source, path: pathlib.Path) -> bool:
  return path.exists() and path.stat().st_size == src.size and sha256_of(path) == src.sha256


def resolve(name: str, split: str, local_root=None, cache_root=None) -> pathlib.Path:
  """The folder holding FILES[name][split]: local_root if it has the file, else cache_root (downloaded there
  and checked on first use). Raises DataUnavailableError naming RL_JAX_DATA_DIR and the source URL."""
  rel = FILES[name][split]
  if local_root is not None and (pathlib.Path(local_root) / rel).exists():
    return pathlib.Path(local_root)
  src = source(name, split)
  if cache_root is None:
    raise DataUnavailableError(_missing(name, split, rel, local_root, src, "no download folder was given"))
  cache_root = pathlib.Path(cache_root)
  if not _cached(src, cache_root / rel):
    try:
      fetch(src, cache_root / rel)
    except Exception as e:  # network, HTTP or checksum: the message says which
      raise DataUnavailableError(_missing(name, split, rel, local_root, src, f"{type(e).__name__}: {e}")) from e
  return cache_root


def _missing(name, split, rel, local_root, src: Source, why: str) -> str:
  where = (f"{pathlib.Path(local_root) / rel} does not exist" if local_root is not None
           else "the data folder is missing or empty")
  return (f"Data set {name!r} ({split}) is not available: {where}, and the download from {src.url} failed "
          f"({why}). Either set RL_JAX_DATA_DIR to a data folder holding {rel} (e.g. a copy made on a machine "
          f"with internet), or allow this machine to reach {src.url.split('/')[2]}.")

