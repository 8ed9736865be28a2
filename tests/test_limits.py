"""Issue 18: a megabyte-long answer once made scoring ask for a 233 GiB attention mask
(MemoryError mid-run). Every text field read from an input (subject, object, candidate,
template, id) is refused above `MAX_TEXT_CHARS` characters when it is read, before any
work: these tests check the refusal, never allocating anything large."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.core.errors import InputError
from ckl.data.facts import MAX_TEXT_CHARS, fact_row, jsonl_text, relation_row
from ckl.data.stream import Stream

LONG = " ".join(["word"] * (MAX_TEXT_CHARS // 5 + 1))  # multi-word, just over the limit
MEGABYTE = "ab " * 350_000  # the input: about 1 MB, 350,000 words


def _first(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[0])


def _set_first(path: Path, **changes) -> None:
    lines = path.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), **changes})
    path.write_text("\n".join(lines) + "\n")


CASES = {  # file, changes to its first line, the field named
    "a megabyte-long object": ("facts.jsonl", lambda row: {"object": MEGABYTE}, "object"),
    "an object one word over the limit": ("facts.jsonl", lambda row: {"object": LONG}, "object"),
    "a long subject": ("facts.jsonl", lambda row: {"subject": LONG}, "subject"),
    "a long candidate": ("relations.jsonl", lambda row: {"candidates": [*row["candidates"], LONG]}, "candidates"),
    "a long template": ("relations.jsonl", lambda row: {"templates": ["{subject} " + LONG]}, "templates"),
    "a long object in a change": ("changes.jsonl", lambda row: {"object": LONG}, "object"),
}


@pytest.fixture
def stream_dir(tmp_path, tiny_stream):
    d = tmp_path / "stream"
    tiny_stream.save(d)
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_text_field_above_the_documented_maximum_is_refused_when_read(stream_dir, case):
    name, changes, field = CASES[case]
    path = stream_dir / name
    row = _first(path)
    assert name != "changes.jsonl" or row["kind"] == "learn"  # a line with an object
    _set_first(path, **changes(row))
    with pytest.raises(InputError) as err:
        Stream.load(stream_dir)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 1, field)
    assert f"at most {MAX_TEXT_CHARS} are allowed" in err.value.message
    assert len(str(err.value)) < 300  # the message does not echo the text


def test_a_text_of_exactly_the_maximum_length_is_read(stream_dir):
    exact = ("word " * MAX_TEXT_CHARS)[: MAX_TEXT_CHARS - 1] + "s"
    assert len(exact) == MAX_TEXT_CHARS
    _set_first(stream_dir / "facts.jsonl", object=exact)
    assert Stream.load(stream_dir).base[0].object == exact


def test_ckl_run_with_a_megabyte_long_answer_exits_2_and_writes_nothing(stream_dir, tmp_path):
    _set_first(stream_dir / "facts.jsonl", object=MEGABYTE)
    config = {"name": "long", "stream": str(stream_dir), "model": str(tmp_path / "no_model"),
              "methods": [{"name": "naive", "skip": ["forget", "edit"]}]}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {stream_dir / 'facts.jsonl'}:1: field 'object'") and "at most 1000" in result.output
    assert not (tmp_path / "out").exists()


def test_ckl_update_refuses_a_long_object_in_a_fact_file_before_any_work(tmp_path, tiny_stream, tiny_model_dir):
    rels, learn = tmp_path / "relations.jsonl", tmp_path / "learn.jsonl"
    rels.write_text(jsonl_text(relation_row(r) for r in tiny_stream.relations.values()))
    fact = tiny_stream.stages[0].learn[0]
    learn.write_text(jsonl_text([{**fact_row(fact), "object": LONG}]))
    result = CliRunner().invoke(app, ["update", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"),
                                      "--relations", str(rels), "--learn", str(learn), "--no-gates"])
    assert result.exit_code == 2, result.output
    assert f"{learn}:1: field 'object'" in result.output and "at most 1000" in result.output
    assert not (tmp_path / "out").exists()


def test_importers_refuse_a_long_answer(tmp_path):
    from ckl.data.formats.counterfact import counterfact_stream
    from ckl.data.formats.pile import load_pile

    record = {"case_id": 0, "prompt": "The mother tongue of Ada Vale is", "subject": "Ada Vale", "ground_truth": "French",
              "target_new": LONG, "rephrase_prompt": "Ada Vale grew up speaking", "locality_prompt": "Bo Lind speaks",
              "locality_ground_truth": "French"}
    path = tmp_path / "cf.json"
    path.write_text("[\n" + json.dumps(record) + "\n]\n")
    with pytest.raises(InputError) as err:
        counterfact_stream(path)
    assert (err.value.line, err.value.field) == (2, "target_new") and "at most 1000" in err.value.message

    path = tmp_path / "pile.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("doc_id", "corpus", "text"), ("1", "github", "x" * (MAX_TEXT_CHARS + 1) + " tail")])
    with pytest.raises(InputError) as err:
        load_pile(path)
    assert err.value.field == "text" and "doc_id 1" in err.value.message and "at most 1000" in err.value.message


def test_the_maximum_is_documented():
    formats = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    assert f"{MAX_TEXT_CHARS:,} characters" in formats
