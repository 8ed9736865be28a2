"""The native JSONL readers: every mistake names its file, line and field; rows round-trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ckl.core.errors import InputError
from ckl.data.facts import (
    ChangeRecord,
    Fact,
    Relation,
    change_row,
    fact_row,
    iter_jsonl,
    jsonl_text,
    read_changes,
    read_facts,
    read_relations,
    relation_row,
)
from ckl.data.stream import Stream

BORN = {"name": "born", "templates": ["{subject} was born in"], "questions": ["Where was {subject} born?"]}
WORKS = {"name": "works", "templates": ["{subject} works for"]}
RELATIONS = {
    "born": Relation("born", ("{subject} was born in",), (), ("Where was {subject} born?",)),
    "works": Relation("works", ("{subject} works for",)),
}
BASE = [
    Fact("f1", "Alda Venmore", "born", "Port Elmira"),
    Fact("f2", "Alda Venmore", "works", "Corvane Labs"),
]


def write(path: Path, *lines: Any) -> Path:
    """Write one line per item: dicts as JSON, strings verbatim."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


def check(err: pytest.ExceptionInfo[InputError], path: Path, line: int | None, field: str | None) -> None:
    assert err.value.file == str(path)
    assert err.value.line == line
    assert err.value.field == field
    assert err.value.message


def fact(fid: str = "f9", **over: Any) -> dict[str, Any]:
    row = {"id": fid, "subject": "Brenwen Holt", "relation": "born", "object": "Ostwick"}
    row.update(over)
    return row


def changes(tmp_path: Path, *lines: Any) -> pytest.ExceptionInfo[InputError]:
    path = write(tmp_path / "changes.jsonl", *lines)
    with pytest.raises(InputError) as err:
        read_changes(path, BASE, RELATIONS)
    return err


# ---------------------------------------------------------------------------- the error shape


def test_error_message_names_file_line_and_field() -> None:
    assert str(InputError("facts.jsonl", 3, "object", "missing required field")) == (
        "facts.jsonl:3: field 'object': missing required field"
    )
    assert str(InputError("dir", None, None, "stream directory not found")) == "dir: stream directory not found"


# ---------------------------------------------------------------------------- any JSONL file


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "facts.jsonl", fact("f1"), '{"id": "f2",')
    with pytest.raises(InputError, match="invalid JSON") as err:
        read_facts(path, RELATIONS)
    check(err, path, 2, None)


def test_non_object_line_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "facts.jsonl", '["f1", "Alda", "born", "Ostwick"]')
    with pytest.raises(InputError, match="expected a JSON object, got list") as err:
        read_facts(path, RELATIONS)
    check(err, path, 1, None)


def test_blank_lines_are_skipped_but_still_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "facts.jsonl", fact("f1"), "", "   ", fact("f2", object=""))
    assert [n for n, _ in iter_jsonl(write(tmp_path / "ok.jsonl", fact("f1"), "", fact("f2")))] == [1, 3]
    with pytest.raises(InputError) as err:
        read_facts(path, RELATIONS)
    check(err, path, 4, "object")


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found") as err:
        read_facts(tmp_path / "nope.jsonl", RELATIONS)
    check(err, tmp_path / "nope.jsonl", None, None)


# ---------------------------------------------------------------------------- relations.jsonl


def test_duplicate_relation_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "relations.jsonl", BORN, WORKS, BORN)
    with pytest.raises(InputError, match="duplicate relation 'born'") as err:
        read_relations(path)
    check(err, path, 3, "name")


def test_relation_without_name_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "relations.jsonl", {"templates": ["{subject} was born in"]})
    with pytest.raises(InputError, match="missing required field") as err:
        read_relations(path)
    check(err, path, 1, "name")


@pytest.mark.parametrize("key", ["templates", "paraphrases", "questions"])
def test_template_without_subject_is_rejected(tmp_path: Path, key: str) -> None:
    row = dict(BORN, **{key: ["{subject} was born in", "Born in"]})
    path = write(tmp_path / "relations.jsonl", WORKS, row)
    with pytest.raises(InputError, match="has no '{subject}' placeholder") as err:
        read_relations(path)
    check(err, path, 2, key)


@pytest.mark.parametrize(
    ("templates", "message"),
    [(None, "missing required field"), ([], "must not be empty"), (["ok {subject}", ""], "list of non-empty strings"),
     ("{subject} was born in", "list of non-empty strings")],
)
def test_templates_must_be_a_non_empty_list_of_strings(tmp_path: Path, templates: Any, message: str) -> None:
    row = {"name": "born"} if templates is None else {"name": "born", "templates": templates}
    path = write(tmp_path / "relations.jsonl", row)
    with pytest.raises(InputError, match=message) as err:
        read_relations(path)
    check(err, path, 1, "templates")


def test_candidates_need_no_subject_but_must_be_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "relations.jsonl", dict(BORN, candidates=["Ostwick", 3]))
    with pytest.raises(InputError) as err:
        read_relations(path)
    check(err, path, 1, "candidates")


def test_empty_relations_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "relations.jsonl", "")
    with pytest.raises(InputError, match="no relations") as err:
        read_relations(path)
    check(err, path, None, None)


# ---------------------------------------------------------------------------- facts.jsonl


@pytest.mark.parametrize("key", ["id", "subject", "relation", "object"])
def test_missing_fact_field_is_named(tmp_path: Path, key: str) -> None:
    row = fact()
    del row[key]
    path = write(tmp_path / "facts.jsonl", fact("f1"), row)
    with pytest.raises(InputError, match="missing required field") as err:
        read_facts(path, RELATIONS)
    check(err, path, 2, key)


@pytest.mark.parametrize(("key", "value"), [("subject", ""), ("object", "   "), ("id", 7), ("subject", ["a"])])
def test_empty_or_non_string_fact_field_is_named(tmp_path: Path, key: str, value: Any) -> None:
    path = write(tmp_path / "facts.jsonl", fact(**{key: value}))
    with pytest.raises(InputError, match="must be a non-empty string") as err:
        read_facts(path, RELATIONS)
    check(err, path, 1, key)


def test_unknown_relation_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "facts.jsonl", fact(relation="died"))
    with pytest.raises(InputError, match=r"unknown relation 'died' \(known: born, works\)") as err:
        read_facts(path, RELATIONS)
    check(err, path, 1, "relation")


def test_duplicate_fact_id_points_at_the_first(tmp_path: Path) -> None:
    path = write(tmp_path / "facts.jsonl", fact("f1"), fact("f2"), fact("f1", object="Tolvane"))
    with pytest.raises(InputError, match=r"duplicate id 'f1' \(first on line 1\)") as err:
        read_facts(path, RELATIONS)
    check(err, path, 3, "id")


@pytest.mark.parametrize(("over", "key"), [
    ({"valid_from": 2, "valid_until": 2}, "valid_until"),
    ({"valid_until": 0}, "valid_until"),
    ({"valid_until": "3"}, "valid_until"),
    ({"valid_from": -1}, "valid_from"),
    ({"valid_from": True}, "valid_from"),
])
def test_bad_validity_interval_is_named(tmp_path: Path, over: dict[str, Any], key: str) -> None:
    path = write(tmp_path / "facts.jsonl", fact(**over))
    with pytest.raises(InputError) as err:
        read_facts(path, RELATIONS)
    check(err, path, 1, key)


# ---------------------------------------------------------------------------- changes.jsonl


@pytest.mark.parametrize("stage", [0, -1, "1", 1.0, None])
def test_bad_stage_is_rejected(tmp_path: Path, stage: Any) -> None:
    row = {"kind": "forget", "id": "f1"} if stage is None else {"stage": stage, "kind": "forget", "id": "f1"}
    check(changes(tmp_path, row), tmp_path / "changes.jsonl", 1, "stage")


def test_decreasing_stage_is_rejected(tmp_path: Path) -> None:
    err = changes(tmp_path, {"stage": 2, "kind": "forget", "id": "f1"}, {"stage": 1, "kind": "forget", "id": "f2"})
    assert "must not decrease" in err.value.message
    check(err, tmp_path / "changes.jsonl", 2, "stage")


def test_unknown_kind_is_rejected(tmp_path: Path) -> None:
    err = changes(tmp_path, {"stage": 1, "kind": "delete", "id": "f1"})
    assert "learn, update, edit, forget" in err.value.message
    check(err, tmp_path / "changes.jsonl", 1, "kind")


def test_unknown_id_is_rejected(tmp_path: Path) -> None:
    err = changes(tmp_path, {"stage": 1, "kind": "update", "id": "f404", "object": "Tolvane"})
    assert "unknown fact id 'f404'" in err.value.message
    check(err, tmp_path / "changes.jsonl", 1, "id")


def test_learn_with_an_existing_id_is_rejected(tmp_path: Path) -> None:
    err = changes(tmp_path, dict(fact("f1"), stage=1, kind="learn"))
    assert "learn needs a new fact id" in err.value.message
    check(err, tmp_path / "changes.jsonl", 1, "id")


def test_learn_of_a_forgotten_id_is_rejected(tmp_path: Path) -> None:
    err = changes(tmp_path, {"stage": 1, "kind": "forget", "id": "f1"}, dict(fact("f1"), stage=2, kind="learn"))
    check(err, tmp_path / "changes.jsonl", 2, "id")


def test_learn_is_validated_like_a_fact(tmp_path: Path) -> None:
    err = changes(tmp_path, dict(fact("f9", relation="died"), stage=1, kind="learn"))
    check(err, tmp_path / "changes.jsonl", 1, "relation")
    err = changes(tmp_path, {"stage": 1, "kind": "learn", "id": "f9", "relation": "born", "object": "Ostwick"})
    check(err, tmp_path / "changes.jsonl", 1, "subject")


def test_forget_of_an_already_forgotten_fact_is_rejected(tmp_path: Path) -> None:
    err = changes(tmp_path, {"stage": 1, "kind": "forget", "id": "f1"}, {"stage": 2, "kind": "forget", "id": "f1"})
    assert "already forgotten" in err.value.message
    check(err, tmp_path / "changes.jsonl", 2, "id")


def test_update_of_a_forgotten_fact_is_rejected(tmp_path: Path) -> None:
    err = changes(
        tmp_path, {"stage": 1, "kind": "forget", "id": "f2"}, {"stage": 2, "kind": "update", "id": "f2", "object": "Lumentide"}
    )
    check(err, tmp_path / "changes.jsonl", 2, "id")


@pytest.mark.parametrize("kind", ["update", "edit"])
def test_update_to_the_same_object_is_rejected(tmp_path: Path, kind: str) -> None:
    err = changes(tmp_path, {"stage": 1, "kind": kind, "id": "f1", "object": "Port Elmira"})
    assert "equals the current one" in err.value.message
    check(err, tmp_path / "changes.jsonl", 1, "object")


def test_update_to_the_object_of_an_earlier_update_is_rejected(tmp_path: Path) -> None:
    err = changes(
        tmp_path,
        {"stage": 1, "kind": "update", "id": "f2", "object": "Lumentide"},
        {"stage": 2, "kind": "update", "id": "f2", "object": "Lumentide"},
    )
    check(err, tmp_path / "changes.jsonl", 2, "object")


def test_update_without_object_is_rejected(tmp_path: Path) -> None:
    err = changes(tmp_path, {"stage": 1, "kind": "update", "id": "f1"})
    check(err, tmp_path / "changes.jsonl", 1, "object")


@pytest.mark.parametrize(("key", "value"), [("subject", "Someone Else"), ("relation", "works")])
def test_mismatched_subject_or_relation_is_rejected(tmp_path: Path, key: str, value: str) -> None:
    err = changes(tmp_path, {"stage": 1, "kind": "update", "id": "f1", "object": "Tolvane", key: value})
    assert "does not match fact 'f1'" in err.value.message
    check(err, tmp_path / "changes.jsonl", 1, key)


def test_matching_subject_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "changes.jsonl", {"stage": 1, "kind": "forget", "id": "f1", "subject": "Alda Venmore"})
    assert read_changes(path, BASE, RELATIONS) == [ChangeRecord(1, "forget", BASE[0])]


def test_same_fact_twice_in_one_stage_is_rejected(tmp_path: Path) -> None:
    err = changes(
        tmp_path, {"stage": 1, "kind": "update", "id": "f2", "object": "Lumentide"}, {"stage": 1, "kind": "forget", "id": "f2"}
    )
    assert "already changed in stage 1 (line 1)" in err.value.message
    check(err, tmp_path / "changes.jsonl", 2, "id")


# ---------------------------------------------------------------------------- stream directory


def write_stream(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    write(d / "relations.jsonl", BORN, WORKS)
    write(d / "facts.jsonl", *[fact_row(f) for f in BASE])


def test_missing_stream_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="stream directory not found") as err:
        Stream.load(tmp_path / "missing")
    check(err, tmp_path / "missing", None, None)


@pytest.mark.parametrize("name", ["relations.jsonl", "facts.jsonl"])
def test_missing_required_stream_file_is_named(tmp_path: Path, name: str) -> None:
    write_stream(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(InputError, match="file not found") as err:
        Stream.load(tmp_path)
    check(err, tmp_path / name, None, None)


def test_stream_load_reports_errors_in_the_changes_file(tmp_path: Path) -> None:
    write_stream(tmp_path)
    write(tmp_path / "changes.jsonl", {"stage": 1, "kind": "forget", "id": "f1"}, {"stage": 1, "kind": "forget", "id": "nope"})
    with pytest.raises(InputError) as err:
        Stream.load(tmp_path)
    check(err, tmp_path / "changes.jsonl", 2, "id")


def test_stream_without_changes_or_general_text_loads_empty(tmp_path: Path) -> None:
    write_stream(tmp_path)
    stream = Stream.load(tmp_path)
    assert stream.base == tuple(BASE) and stream.stages == () and stream.general_train == ()


# ---------------------------------------------------------------------------- round trips


def test_relations_round_trip(tmp_path: Path) -> None:
    relations = {
        "born": Relation("born", ("{subject} was born in", "{subject} came into the world in"),
                         ("{subject} first drew breath in",), ("Where was {subject} born?",), ("Port Elmira", "Ostwick")),
        "works": Relation("works", ("{subject} works for",)),
    }
    path = tmp_path / "relations.jsonl"
    path.write_text(jsonl_text(relation_row(r) for r in relations.values()), encoding="utf-8")
    assert read_relations(path) == relations


def test_facts_round_trip(tmp_path: Path) -> None:
    facts = BASE + [Fact("f3", "Brenwen Holt", "works", "Orrin and Vale", 1, 3), Fact("f4", "Zélia Ørn", "born", "Saint Ombre")]
    path = tmp_path / "facts.jsonl"
    path.write_text(jsonl_text(fact_row(f) for f in facts), encoding="utf-8")
    assert read_facts(path, RELATIONS) == facts
    assert "valid_until" not in fact_row(BASE[0])


def test_changes_round_trip(tmp_path: Path) -> None:
    learned = Fact("f3", "Brenwen Holt", "works", "Lumentide", 1)
    records = [
        ChangeRecord(1, "learn", learned),
        ChangeRecord(1, "update", Fact("f2", "Alda Venmore", "works", "Northwind Freight", 1), "Corvane Labs"),
        ChangeRecord(2, "edit", Fact("f1", "Alda Venmore", "born", "Tolvane", 2), "Port Elmira"),
        ChangeRecord(2, "forget", learned),
        ChangeRecord(3, "update", Fact("f2", "Alda Venmore", "works", "Lumentide", 3), "Northwind Freight"),
    ]
    path = tmp_path / "changes.jsonl"
    path.write_text(jsonl_text(change_row(r) for r in records), encoding="utf-8")
    assert read_changes(path, BASE, RELATIONS) == records


def test_stream_round_trip(tmp_path: Path) -> None:
    records = [
        ChangeRecord(1, "learn", Fact("f3", "Brenwen Holt", "born", "Ostwick", 1)),
        ChangeRecord(1, "update", Fact("f2", "Alda Venmore", "works", "Lumentide", 1), "Corvane Labs"),
        ChangeRecord(2, "forget", BASE[0]),
    ]
    write_stream(tmp_path / "src")
    write(tmp_path / "src" / "changes.jsonl", *[change_row(r) for r in records])
    (tmp_path / "src" / "general_train.txt").write_text("It was sunny.\n\nThe dog slept.\n", encoding="utf-8")
    stream = Stream.load(tmp_path / "src")
    assert stream.records() == records
    assert stream.general_train == ("It was sunny.", "The dog slept.")
    stream.save(tmp_path / "copy")
    assert Stream.load(tmp_path / "copy") == stream


def test_atomic_writes_get_a_normal_file_mode(tmp_path):
    import os
    import stat

    from ckl.data.facts import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "<p>hi</p>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
