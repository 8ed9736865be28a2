"""`ckl data get`: the benchmark files from their origin or a local mirror, checksums
checked, nothing written unless every file arrived; the shipped samples import cleanly."""

import dataclasses
import hashlib
import subprocess
import sys

import pytest

from ckl.core.errors import InputError
from ckl.data import sources
from ckl.data.check import check_stream
from ckl.data.formats.registry import import_to
from ckl.data.sources import SOURCES, File, get, sample_path

IMPORTER = {"counterfact": "counterfact", "zsre": "zsre", "knowundo": "knowundo"}


@pytest.mark.parametrize("name", [n for n, s in SOURCES.items() if s.sample])
def test_every_shipped_sample_imports_and_passes_the_check(name, tmp_path):
    (first, *_) = get(name, tmp_path / "raw", sample=True, say=lambda m: None)
    source = first.parent if name == "knowundo" else first
    import_to(IMPORTER[name], source, tmp_path / "stream", {})
    assert [str(f) for f in check_stream(tmp_path / "stream") if f.severity == "error"] == []


def _only_file(monkeypatch, name: str, content: bytes | None, url: str = "https://example.invalid/x.json"):
    """Make source `name` one file whose expected checksum is that of `content`."""
    sha = hashlib.sha256(content).hexdigest() if content is not None else None
    source = dataclasses.replace(SOURCES[name], files=(File("data.json", url, sha),))
    monkeypatch.setitem(SOURCES, name, source)


def test_a_mirror_with_the_right_file_is_copied(monkeypatch, tmp_path):
    content = sample_path("counterfact-edit-300.json").read_bytes()
    _only_file(monkeypatch, "counterfact", content)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "data.json").write_bytes(content)
    (written,) = get("counterfact", tmp_path / "out", mirror=tmp_path / "mirror", say=lambda m: None)
    assert written.read_bytes() == content


def test_a_changed_file_is_refused_unless_asked_and_nothing_is_written(monkeypatch, tmp_path):
    _only_file(monkeypatch, "counterfact", b"what ckl was measured on")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "data.json").write_bytes(b"something else")
    with pytest.raises(InputError, match="differs from the version ckl was measured on"):
        get("counterfact", tmp_path / "out", mirror=tmp_path / "mirror", say=lambda m: None)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["mirror"]
    (written,) = get("counterfact", tmp_path / "out", mirror=tmp_path / "mirror", verify=False, say=lambda m: None)
    assert written.read_bytes() == b"something else"


def test_offline_is_a_clear_error_and_writes_nothing(monkeypatch, tmp_path):
    _only_file(monkeypatch, "pile", b"x", url="http://127.0.0.1:9/lm_extraction_128_0.csv")  # nothing listens on port 9
    with pytest.raises(InputError) as err:
        get("pile", tmp_path / "out", timeout=5, say=lambda m: None)
    assert "could not download" in err.value.message and "--from DIR" in err.value.message and "--sample" not in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="did you mean 'counterfact'"):
        get("counterfakt", tmp_path / "a")
    with pytest.raises(InputError, match="ships no sample"):
        get("pile", tmp_path / "b", sample=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="new or empty"):
        get("zsre", tmp_path / "c", sample=True)


def test_every_source_is_pinned_to_a_commit_and_checksum():
    for source in SOURCES.values():
        for f in source.files:
            assert f.url.startswith("https://") and f.sha256 and len(f.sha256) == 64, f
            assert any(len(part) == 40 and all(c in "0123456789abcdef" for c in part) for part in f.url.split("/")), f.url
    assert sources.sample_path("README.md").read_text().count("MIT") >= 3


def test_ckl_data_get_sample_then_import(tmp_path):
    ckl = [sys.executable, "-m", "ckl"]
    r = subprocess.run([*ckl, "data", "get", "zsre", "--sample", "--out", tmp_path / "z"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ckl import zsre" in r.stdout
    r = subprocess.run([*ckl, "import", "zsre", tmp_path / "z" / "zsre_mend_train-300.json", "--out", tmp_path / "s"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
