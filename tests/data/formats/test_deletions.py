"""Deletion requests in the native stream format (changes.jsonl forget lines, and the
never-seen facts of unseen.jsonl): malformed files are rejected with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckl.core.errors import InputError
from ckl.data.formats.pile import PileConfig, load_pile
from ckl.data.stream import Stream


def _stream_dir(tmp_path: Path, changes: list, unseen: list | None = None) -> Path:
    d = tmp_path / "s"
    d.mkdir()
    rel = {"name": "text", "templates": ["{subject}"]}
    facts = [{"id": f"t{i}", "subject": f"prompt {i}", "relation": "text", "object": f"answer {i}"} for i in range(3)]
    (d / "relations.jsonl").write_text(json.dumps(rel) + "\n")
    (d / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    (d / "changes.jsonl").write_text("".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in changes))
    if unseen is not None:
        (d / "unseen.jsonl").write_text("".join(json.dumps(f) + "\n" for f in unseen))
    return d


def test_a_well_formed_deletion_stream_loads(tmp_path):
    unseen = [{"id": "u1", "subject": "prompt 9", "relation": "text", "object": "answer 9"}]
    stream = Stream.load(_stream_dir(tmp_path, [{"stage": 1, "kind": "forget", "id": "t0"}, {"stage": 2, "kind": "forget", "id": "t1"}], unseen))
    assert [len(c.forget) for c in stream.stages] == [1, 1]
    assert [f.id for f in stream.unseen] == ["u1"]
    assert {p.cohort for p in stream.probes()} == {"invariant", "forget1", "forget2", "unseen"}


@pytest.mark.parametrize("changes, line, field, words", [
    ([{"stage": 1, "kind": "forget", "id": "t0"}, {"stage": 1, "kind": "forget", "id": "nope"}], 2, "id", "unknown fact id"),
    ([{"stage": 1, "kind": "forget", "id": "t0"}, {"stage": 2, "kind": "forget", "id": "t0"}], 2, "id", "already forgotten"),
    ([{"stage": 1, "kind": "forget", "id": "t0", "subject": "prompt 2"}], 1, "subject", "does not match"),
    ([{"stage": 1, "kind": "forget"}], 1, "id", "missing required field"),
    ([{"stage": 1, "kind": "forget", "id": "t0"}, '{"stage": 1, "kind": "forget", "id": "t1"'], 2, None, "invalid JSON"),
    ([{"stage": 2, "kind": "forget", "id": "t0"}, {"stage": 1, "kind": "forget", "id": "t1"}], 2, "stage", "must not decrease"),
])
def test_malformed_deletion_lines_name_file_and_line(tmp_path, changes, line, field, words):
    with pytest.raises(InputError) as info:
        Stream.load(_stream_dir(tmp_path, changes))
    err = info.value
    assert err.file.endswith("changes.jsonl") and err.line == line and err.field == field and words in err.message


def test_unseen_facts_must_never_be_taught(tmp_path):
    unseen = [{"id": "u1", "subject": "p", "relation": "text", "object": "a"}, {"id": "t2", "subject": "p", "relation": "text", "object": "a"}]
    with pytest.raises(InputError) as info:
        Stream.load(_stream_dir(tmp_path, [{"stage": 1, "kind": "forget", "id": "t0"}], unseen))
    assert info.value.file.endswith("unseen.jsonl") and info.value.line == 2 and "never be taught" in info.value.message


def test_unseen_facts_are_checked_like_facts(tmp_path):
    unseen = [{"id": "u1", "subject": "p", "relation": "nope", "object": "a"}]
    with pytest.raises(InputError) as info:
        Stream.load(_stream_dir(tmp_path, [{"stage": 1, "kind": "forget", "id": "t0"}], unseen))
    assert info.value.file.endswith("unseen.jsonl") and info.value.line == 1 and info.value.field == "relation"


def test_an_imported_scenario_round_trips_through_the_native_files(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("doc_id,corpus,text\n" + "".join(f'{i},github,"w{i} a, b\nc d e"\n' for i in range(5)))
    stream = load_pile(csv_path, PileConfig(prefix_words=2, suffix_words=3, forget=2, unseen=1, stages=2))
    stream.save(tmp_path / "s")
    again = Stream.load(tmp_path / "s")
    assert again.base == stream.base and again.unseen == stream.unseen and again.T == 2
    assert again.stages[0].forget[0].object == "b\nc d"
