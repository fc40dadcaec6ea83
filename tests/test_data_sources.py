"""Data that arrives by itself: published sources with checksums, downloads through a real URL opener
(file:// here, no network), one clear error when neither the data folder nor the source is reachable."""

import dataclasses
import hashlib
import re
import urllib.error

import pytest

from rl_jax import data
from rl_jax.data import __main__ as data_cli
from rl_jax.data import records, sources


def test_every_split_has_a_pinned_published_source():
  assert set(sources.SOURCES) == {(n, s) for n, splits in records.FILES.items() for s in splits}
  for src in sources.SOURCES.values():
    assert src.url.startswith("https://") and re.search(r"/[0-9a-f]{40}/", src.url), src.url   # a commit, not a branch
    assert re.fullmatch(r"[0-9a-f]{64}", src.sha256) and src.size > 0 and src.rows > 0
  assert sources.SOURCES[("gsm8k", "train")].rows == 7473 and sources.SOURCES[("gsm8k", "test")].rows == 1319
  assert sources.SOURCES[("math500", "test")].rows == 500 and sources.SOURCES[("aime24", "test")].rows == 30


def test_the_data_folder_holds_the_published_bytes(data_root):
  """The checksums describe the published files; the data folder's copies are byte-identical to them."""
  for (name, split), src in sources.SOURCES.items():
    body = (data_root / records.FILES[name][split]).read_bytes()
    assert (len(body), hashlib.sha256(body).hexdigest()) == (src.size, src.sha256), name
    assert sum(1 for line in body.splitlines() if line.strip()) == src.rows, name


def _mirror(tmp_path, data_root, name, corrupt=False):
  """A local copy of the published file and its source pointed at it through a file:// URL."""
  src = sources.SOURCES[(name, "test")]
  copy = tmp_path / "mirror" / f"{name}.jsonl"
  copy.parent.mkdir(parents=True, exist_ok=True)
  body = (data_root / records.FILES[name]["test"]).read_bytes()
  copy.write_bytes(body.replace(b"1", b"2", 1) if corrupt else body)
  return dataclasses.replace(src, url=copy.as_uri())


def test_download_when_the_data_folder_lacks_the_set(tmp_path, monkeypatch, data_root):
  monkeypatch.setitem(sources.SOURCES, ("aime24", "test"), _mirror(tmp_path, data_root, "aime24"))
  empty = tmp_path / "empty"
  empty.mkdir()
  got = data.load("aime24", "test", data_dir=tmp_path / "tfds", manual_dir=empty)
  assert len(got) == 30 and got[:] == list(records.read("aime24", "test", data_root))
  cached = tmp_path / "tfds" / "downloads" / "rl_jax" / "eval" / "aime24.jsonl"
  assert cached.read_bytes() == (data_root / "eval" / "aime24.jsonl").read_bytes()
  assert not list(cached.parent.glob("*.part*"))


def test_a_download_with_the_wrong_checksum_is_refused_and_not_kept(tmp_path, monkeypatch, data_root):
  monkeypatch.setitem(sources.SOURCES, ("amc23", "test"), _mirror(tmp_path, data_root, "amc23", corrupt=True))
  with pytest.raises(data.DataUnavailableError, match="SHA-256"):
    data.load("amc23", "test", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "none")
  assert not list((tmp_path / "tfds" / "downloads").rglob("*.jsonl*"))


def test_no_data_folder_and_no_network_names_both_ways(tmp_path, monkeypatch):
  def offline(url, timeout=None):
    raise urllib.error.URLError("[Errno -2] Name or service not known")
  monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
  monkeypatch.setenv("RL_JAX_DATA_DIR", str(tmp_path / "hidden"))
  with pytest.raises(data.DataUnavailableError) as err:
    data.load("minerva_math", "test", data_dir=tmp_path / "tfds")
  message = str(err.value)
  assert "RL_JAX_DATA_DIR" in message and sources.SOURCES[("minerva_math", "test")].url in message
  assert str(tmp_path / "hidden" / "eval" / "minerva_math.jsonl") in message and "Name or service" in message
  assert data_cli.main(["prepare", "minerva_math"]) == 1          # the prepare command reports it too


def test_a_local_file_with_another_row_count_is_refused(tmp_path, data_root):
  folder = tmp_path / "data" / "eval"
  folder.mkdir(parents=True)
  lines = (data_root / "eval" / "aime24.jsonl").read_text().splitlines(keepends=True)
  (folder / "aime24.jsonl").write_text("".join(lines[:29]))
  with pytest.raises(ValueError, match="has 29 rows; the published aime24 test split has 30"):
    data.load("aime24", "test", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "data")


def test_prepare_command(tmp_path, monkeypatch, capsys, data_root):
  monkeypatch.setenv("RL_JAX_TFDS_DIR", str(tmp_path / "tfds"))
  assert data_cli.main(["prepare", "aime24", "amc23"]) == 0
  lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith(("Downloading", "Dataset"))]
  assert lines == ["aime24 test: 30 rows", "amc23 test: 40 rows"]
  assert data_cli.main(["prepare", "gsm9k"]) == 2 and data_cli.main([]) == 2
