"""Every registered importer (ckl.data.formats.registry), with no list to edit: its
sample source imports with the default options into a stream that loads back the same,
twice byte for byte; `ckl import <name>` exists with one option per field of its options;
and a bad option, a missing source or a non-empty --out stops with a message and exit 2,
nothing written."""

import dataclasses
import filecmp

import pytest
from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.core.errors import InputError
from ckl.data.formats.registry import import_to, importers
from ckl.data.stream import Stream

NAMES = sorted(importers())


def test_the_suite_sees_every_importer():
    assert {"counterfact", "zsre", "knowundo", "pile"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_sample_imports_with_defaults_and_round_trips_byte_for_byte(name, tmp_path):
    importer = importers()[name]
    source = importer.sample(tmp_path / "src")
    stream = import_to(name, source, tmp_path / "a")
    again = import_to(name, source, tmp_path / "b")
    assert len(stream.base) > 0 and stream.T >= 1 and stream.probes()
    compared = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert compared.left_list and not compared.diff_files and not compared.left_only and not compared.right_only
    loaded = Stream.load(tmp_path / "a")
    assert loaded.probes() == stream.probes() and loaded.base == stream.base == again.base


@pytest.mark.parametrize("name", NAMES)
def test_ckl_import_offers_every_option_and_writes_the_stream(name, tmp_path):
    importer = importers()[name]
    runner = CliRunner()
    shown = runner.invoke(app, ["import", name, "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0
    for field in dataclasses.fields(importer.options):
        assert "--" + field.name.replace("_", "-") in shown.output, field.name
    source = importer.sample(tmp_path / "src")
    done = runner.invoke(app, ["import", name, str(source), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert f"wrote {tmp_path / 'out'}" in done.output and (tmp_path / "out" / "facts.jsonl").exists()


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_a_missing_source_or_a_taken_out_write_nothing(name, tmp_path):
    importer = importers()[name]
    source = importer.sample(tmp_path / "src")
    with pytest.raises(InputError, match="unknown option"):
        import_to(name, source, tmp_path / "x", {"no_such_option": 1})
    with pytest.raises(InputError):
        import_to(name, tmp_path / "missing", tmp_path / "x")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="not an empty directory"):
        import_to(name, source, taken)
    assert not (tmp_path / "x").exists() and [p.name for p in taken.iterdir()] == ["mine.txt"]
    ints = [f for f in dataclasses.fields(importer.options) if f.type in ("int", int)]
    bad = CliRunner().invoke(app, ["import", name, str(source), "--out", str(tmp_path / "y"), "--" + ints[0].name.replace("_", "-"), "-5"])
    assert bad.exit_code == 2 and not (tmp_path / "y").exists()
