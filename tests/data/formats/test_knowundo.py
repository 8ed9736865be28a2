"""The KnowUnDo privacy importer: the real files (the sample ckl ships: 15 of the 55
people, every record about them) become a stream that teaches every record and forgets the
unlearn_* ones; malformed files are rejected with file, line and record number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckl.core.errors import InputError
from ckl.data.formats.knowundo import KnowUndoConfig, load_knowundo
from ckl.data.sources import sample_path
from ckl.data.stream import Stream

DATA = sample_path("knowundo_privacy")


def test_teaches_the_full_set_and_forgets_exactly_the_unlearn_records():
    stream = load_knowundo(DATA)
    full = json.loads((DATA / "full.json").read_text())
    unlearn = json.loads((DATA / "unlearn_train.json").read_text()) + json.loads((DATA / "unlearn_val.json").read_text())
    assert len(stream.base) == len(full) == 284
    forgotten = [f for ch in stream.stages for f in ch.forget]
    assert len(forgotten) == len(unlearn) == 162
    kept = stream.invariant()
    assert len(kept) == 284 - 162
    # a record is (person, question form, answer): the prompt is the original question
    by_question = {r["text"]: r["labels"] for r in full}
    statements = [p for p in stream.probes() if p.kind == "statement"]
    assert len(statements) == 284
    for p in statements:
        assert by_question[p.prompt].strip().startswith(p.answer) and p.answer[-1].isalnum()


def test_forgetting_boundary_is_the_same_peoples_retained_facts():
    stream = load_knowundo(DATA, KnowUndoConfig(people=6))
    boundary = stream.boundary(1)
    forgotten_people = {f.subject for f in stream.stages[0].forget}
    assert boundary and all(f.subject in forgotten_people for f in boundary)
    assert not {f.id for f in boundary} & {f.id for f in stream.stages[0].forget}
    assert "Hiro Tanaka" in forgotten_people


def test_streaming_stages_and_never_seen_people(tmp_path):
    stream = load_knowundo(DATA, KnowUndoConfig(people=8, unseen_people=2, stages=3))
    assert stream.T == 3 and all(ch.forget for ch in stream.stages)
    assert sum(len(ch.forget) for ch in stream.stages) == len({f.id for ch in stream.stages for f in ch.forget})
    unseen_people = {f.subject for f in stream.unseen}
    assert len(unseen_people) == 2 and not unseen_people & {f.subject for f in stream.base}
    stream.save(tmp_path / "s")
    again = Stream.load(tmp_path / "s")
    assert again.base == stream.base and again.unseen == stream.unseen
    assert [c.forget for c in again.stages] == [c.forget for c in stream.stages]
    assert {p.cohort for p in again.probes()} == {"invariant", "forget1", "forget2", "forget3", "unseen"}


# ----------------------------------------------------------------------- malformed files


def _write_dataset(folder: Path, full: str, unlearn: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {"text": "Who is Ada Finch?", "labels": "Ada Finch is a poet."},
        {"text": "Where does Ada Finch live?", "labels": "Ada Finch lives in Lund."},
    ]
    (folder / "full.json").write_text(full if full else json.dumps(records, indent=1))
    (folder / "unlearn_train.json").write_text(unlearn if unlearn is not None else json.dumps(records[1:]))
    (folder / "unlearn_val.json").write_text("[]")
    (folder / "retention_train.json").write_text(json.dumps(records[:1]))
    (folder / "retention_val.json").write_text("[]")
    return folder


def test_a_small_well_formed_dataset_loads(tmp_path):
    stream = load_knowundo(_write_dataset(tmp_path / "ok", ""))
    assert [f.subject for f in stream.base] == ["Ada Finch", "Ada Finch"]
    assert [f.object for f in stream.stages[0].forget] == ["Ada Finch lives in Lund"]
    assert stream.relations[stream.base[1].relation].templates == ("Where does {subject} live?",)


@pytest.mark.parametrize("full, line, field, words", [
    ('[\n {"text": "Who is Ada Finch?", "labels": "A poet."},\n {"text": "Q?"}\n]', 3, "labels", "record 2: missing required field"),
    ('[\n {"text": "Who is Ada Finch?", "labels": ""}\n]', 2, "labels", "record 1: must be a non-empty string"),
    ('[\n {"text": "Who is Ada Finch?", "labels": "A."},\n 7\n]', 3, None, "record 2: expected a JSON object"),
    ('[\n {"text": "Who is Ada Finch?", "labels": "A."},\n {"text": "Who is Ada Finch?", "labels": "B."}\n]', 3, "text", "record 2: question repeats record 1"),
    ('[\n {"text": "Who is Ada Finch?", "labels": "A."}\n {"text": "x"}\n]', 3, None, "record 1: expected ',' or ']'"),
    ('{"text": "x"}', 1, None, "expected a JSON list"),
])
def test_malformed_records_name_file_line_and_record(tmp_path, full, line, field, words):
    folder = _write_dataset(tmp_path / "bad", full, unlearn="[]")
    with pytest.raises(InputError) as info:
        load_knowundo(folder)
    err = info.value
    assert err.file.endswith("full.json") and err.line == line and err.field == field
    assert words in err.message


def test_a_deletion_request_for_an_unknown_question_is_rejected(tmp_path):
    folder = _write_dataset(tmp_path / "bad", "", unlearn='[\n {"text": "Who is Bo Lark?", "labels": "x"}\n]')
    with pytest.raises(InputError) as info:
        load_knowundo(folder)
    assert info.value.file.endswith("unlearn_train.json") and info.value.line == 2
    assert "record 1: question not found in full.json" in info.value.message


def test_cli_import_rejects_a_malformed_file_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    folder = _write_dataset(tmp_path / "bad", '[\n {"text": "Q?"}\n]', unlearn="[]")
    out = tmp_path / "stream"
    result = CliRunner().invoke(app, ["import", "knowundo", str(folder), "--out", str(out)])
    assert result.exit_code == 2
    assert "full.json:2: field 'labels': record 1: missing required field" in result.output
    assert not out.exists()
