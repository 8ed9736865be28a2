"""The Pile extraction importer: targets become text facts (prompt -> continuation) to
memorise and then forget; malformed CSV lines are rejected with file and line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ckl.core.errors import InputError
from ckl.data.formats.pile import PileConfig, load_pile, read_pile_csv
from ckl.data.formats.text_targets import TEXT
from ckl.data.stream import Stream

WORDS = ("the of and to in is was for on that with as by at from it an be this are or his which had not but "
         "river stone map key window garden letter engine harbour market winter candle station ledger").split()


@pytest.fixture(scope="module")
def CSV(tmp_path_factory):
    """128 targets in the benchmark's CSV form (doc_id, corpus, text): the real file's
    licence is unstated, so ckl does not ship it (`ckl data get pile` fetches it). Texts of
    60-90 words with punctuation, quotes and line breaks, like the Pile's."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(128):
        words = [rng.choice(WORDS) for _ in range(rng.randint(60, 90))]
        for j in range(7, len(words), 11):
            words[j] += rng.choice([",", ".", ";", ":\n", '"'])
        rows.append([str(1000 + i), rng.choice(["Pile-CC", "Github", "FreeLaw"]), " ".join(words)])
    return _csv(tmp_path_factory.mktemp("pile") / "targets.csv", rows)


def test_targets_are_cut_at_word_boundaries_of_the_original_text(CSV):
    records = dict(read_pile_csv(CSV))
    assert len(records) == 128
    stream = load_pile(CSV, PileConfig(prefix_words=8, suffix_words=6))
    assert len(stream.base) == 128 and stream.relations[TEXT].templates == ("{subject}",)
    for fact in stream.base:
        text = records[fact.id.removeprefix("pile-")]
        start = text.index(fact.subject)
        assert start == text.index(text.split()[0])  # the prompt starts the target
        rest = text[start + len(fact.subject):]
        assert rest.lstrip().startswith(fact.object)
        assert len(fact.object.split()) <= 6


def test_forget_unseen_and_streaming_stages(CSV, tmp_path):
    stream = load_pile(CSV, PileConfig(limit=40, forget=12, unseen=8, stages=3))
    assert len(stream.base) == 32 and len(stream.unseen) == 8
    assert [len(ch.forget) for ch in stream.stages] == [4, 4, 4]
    assert len(stream.invariant()) == 20
    stream.save(tmp_path / "s")
    again = Stream.load(tmp_path / "s")
    assert again.base == stream.base and again.unseen == stream.unseen
    probe = next(p for p in again.probes() if p.cohort == "forget1")
    assert probe.prompt == stream.stages[0].forget[0].subject and probe.answer == stream.stages[0].forget[0].object


def test_asking_for_more_than_the_file_has_is_an_input_error(CSV):
    with pytest.raises(InputError, match="asked for 500 targets"):
        load_pile(CSV, PileConfig(limit=500))
    with pytest.raises(InputError) as info:
        load_pile(CSV, PileConfig(limit=10, unseen=10))
    assert info.value.field == "unseen"


def _csv(path: Path, rows: list[list[str]], header=("doc_id", "corpus", "text")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("rows, line, field, words", [
    ([["1", "github", "one two three"], ["x", "github", "four five"]], 3, "doc_id", "must be a non-negative integer"),
    ([["1", "github", "one two three"], ["1", "github", "four five"]], 3, "doc_id", "repeats the record on line 2"),
    ([["1", "github", "one two three"], ["2", "github", "alone"]], 3, "text", "at least two words"),
    ([["1", "github", "a\nmulti line\ntext"], ["2", "github"]], 5, None, "expected 3 columns"),
])
def test_malformed_lines_name_file_and_line(tmp_path, rows, line, field, words):
    path = _csv(tmp_path / "t.csv", rows)
    with pytest.raises(InputError) as info:
        read_pile_csv(path)
    err = info.value
    assert err.file == str(path) and err.line == line and err.field == field and words in err.message


def test_a_missing_column_is_named(tmp_path):
    path = _csv(tmp_path / "t.csv", [["1", "one two"]], header=("doc_id", "text"))
    with pytest.raises(InputError) as info:
        read_pile_csv(path)
    assert info.value.line == 1 and info.value.field == "corpus"


def test_cli_import_pile_writes_a_loadable_stream(tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    path = _csv(tmp_path / "t.csv", [[str(i), "github", f"alpha{i} beta gamma delta epsilon zeta"] for i in range(6)])
    out = tmp_path / "stream"
    result = CliRunner().invoke(app, ["import", "pile", str(path), "--out", str(out), "--prefix-words", "2", "--suffix-words", "3", "--forget", "2", "--unseen", "1"])
    assert result.exit_code == 0, result.output
    stream = Stream.load(out)
    assert [f.object for f in stream.stages[0].forget] == ["gamma delta epsilon"] * 2
    assert len(stream.base) == 5 and len(stream.unseen) == 1
    bad = CliRunner().invoke(app, ["import-pile", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")])  # the earlier name still works
    assert bad.exit_code == 2 and "file not found" in bad.output and not (tmp_path / "x").exists()
