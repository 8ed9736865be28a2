"""`ckl check`: each rule catches what loading lets through, names the file and line, and
the commands that use a stream stop on an error before writing anything."""

import json
import subprocess
import sys

import pytest

from ckl.data.check import check_stream
from ckl.data.facts import jsonl_text
from ckl.data.formats.registry import importers
from ckl.data.world import WorldConfig, build_world


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path, rows):
    path.write_text(jsonl_text(rows))


@pytest.fixture
def stream_dir(tmp_path, tiny_stream):
    d = tmp_path / "s"
    tiny_stream.save(d)
    return d


def _only(findings, severity):
    return [f for f in findings if f.severity == severity]


def test_a_generated_world_has_nothing_to_report(stream_dir, tmp_path):
    assert check_stream(stream_dir) == []
    build_world(WorldConfig()).save(tmp_path / "default")
    assert check_stream(tmp_path / "default") == []


def test_a_misspelled_key_is_an_error_and_an_unknown_one_a_warning(stream_dir):
    rows = _rows(stream_dir / "relations.jsonl")
    rows[0]["paraphrase"] = rows[0].pop("paraphrases")  # the relation would get no paraphrase probes
    rows[1]["source"] = "wikidata"
    _write(stream_dir / "relations.jsonl", rows)
    facts = _rows(stream_dir / "facts.jsonl")
    facts[2]["valid_untill"] = 3  # an optional field misspelled: the fact would never expire
    _write(stream_dir / "facts.jsonl", facts)
    found = check_stream(stream_dir)
    errors = {(f.file.split("/")[-1], f.line, f.field) for f in _only(found, "error")}
    assert errors == {("relations.jsonl", 1, "paraphrase"), ("facts.jsonl", 3, "valid_untill")}
    assert "did you mean 'paraphrases'" in next(f.message for f in found if f.field == "paraphrase")
    assert [(f.line, f.field) for f in _only(found, "warning")] == [(2, "source")]


def test_two_base_facts_that_contradict_each_other_are_an_error(stream_dir):
    facts = _rows(stream_dir / "facts.jsonl")
    clash = dict(facts[0], id="dup", object="Nowhere")
    _write(stream_dir / "facts.jsonl", facts + [clash])
    (bad,) = _only(check_stream(stream_dir), "error")
    assert bad.line == len(facts) + 1 and bad.field == "object" and facts[0]["id"] in bad.message


def test_facts_valid_at_different_times_do_not_contradict(stream_dir):
    facts = _rows(stream_dir / "facts.jsonl")
    facts[0]["valid_until"] = 3
    later = dict(facts[0], id="later", object="Nowhere", valid_from=3)
    later.pop("valid_until")
    _write(stream_dir / "facts.jsonl", facts + [later])
    assert _only(check_stream(stream_dir), "error") == []


def test_a_learn_that_contradicts_a_held_fact_is_an_error(stream_dir, tiny_stream):
    base = tiny_stream.base[0]
    changes = _rows(stream_dir / "changes.jsonl")
    touched = {c["id"] for c in changes}
    held = next(f for f in tiny_stream.base if f.id not in touched)
    changes.insert(0, {"stage": 1, "kind": "learn", "id": "new1", "subject": held.subject, "relation": held.relation, "object": "Nowhere"})
    _write(stream_dir / "changes.jsonl", changes)
    (bad,) = _only(check_stream(stream_dir), "error")
    assert (bad.file.endswith("changes.jsonl"), bad.line, bad.field) == (True, 1, "object") and held.id in bad.message
    assert base  # the world has base facts to contradict


def test_a_paraphrase_that_is_a_training_template_is_an_error(stream_dir):
    rows = _rows(stream_dir / "relations.jsonl")
    rows[0]["paraphrases"] = [rows[0]["templates"][0]]
    _write(stream_dir / "relations.jsonl", rows)
    (bad,) = _only(check_stream(stream_dir), "error")
    assert (bad.line, bad.field) == (1, "paraphrases") and "trained sentence" in bad.message


def test_held_out_text_that_is_also_training_text_is_an_error(stream_dir):
    train = (stream_dir / "general_train.txt").read_text().splitlines()
    held = (stream_dir / "general_heldout.txt").read_text().splitlines()
    (stream_dir / "general_heldout.txt").write_text("\n".join(held[:2] + [train[5]] + held[2:]) + "\n")
    (bad,) = _only(check_stream(stream_dir), "error")
    assert bad.file.endswith("general_heldout.txt") and bad.line == 3


def test_meta_stages_disagreeing_with_the_changes(stream_dir):
    meta = json.loads((stream_dir / "meta.json").read_text())
    meta["stages"] = 1  # the changes reach stage 2
    (stream_dir / "meta.json").write_text(json.dumps(meta))
    (bad,) = _only(check_stream(stream_dir), "error")
    assert bad.field == "stages" and "stage 2" in bad.message
    meta["stages"] = 4
    (stream_dir / "meta.json").write_text(json.dumps(meta))
    found = check_stream(stream_dir)
    assert _only(found, "error") == [] and "stages 3-4 change nothing" in _only(found, "warning")[0].message


def test_no_candidates_is_a_warning_and_an_error_for_the_rank_metric(stream_dir):
    rows = _rows(stream_dir / "relations.jsonl")
    rows[0]["candidates"] = []
    _write(stream_dir / "relations.jsonl", rows)
    assert [f.field for f in check_stream(stream_dir)] == ["candidates"]
    assert [f.severity for f in check_stream(stream_dir, rank_metric=True)] == ["error"]


def test_word_prefix_candidates_and_stop_tokens_are_warnings(stream_dir):
    rows = _rows(stream_dir / "relations.jsonl")
    first = rows[0]["candidates"][0]
    rows[0]["candidates"].append(first + " Harbour")
    _write(stream_dir / "relations.jsonl", rows)
    facts = _rows(stream_dir / "facts.jsonl")
    facts[3]["object"] = "St. Ives"
    facts[4]["object"] = "St. Ives"
    _write(stream_dir / "facts.jsonl", facts)
    found = check_stream(stream_dir)
    assert _only(found, "error") == []
    messages = [f.message for f in found]
    assert any(f"{first!r} is a word-prefix of {first + ' Harbour'!r}" in m for m in messages)
    stop = next(f for f in found if "stop token" in f.message)
    assert stop.line == 4 and stop.message.startswith("2 object(s)")


@pytest.mark.parametrize("name", sorted(importers()))
def test_every_importers_sample_passes_the_check(name, tmp_path):
    from ckl.data.formats.registry import import_to

    importer = importers()[name]
    source = importer.sample(tmp_path / "src")
    import_to(name, source, tmp_path / "out", {})
    assert [str(f) for f in check_stream(tmp_path / "out") if f.severity == "error"] == []


def _ckl(*args):
    return subprocess.run([sys.executable, "-m", "ckl", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_ckl_check_exits_2_on_an_error_and_names_it(stream_dir):
    r = _ckl("check", stream_dir)
    assert r.returncode == 0 and "no problems found" in r.stdout
    rows = _rows(stream_dir / "relations.jsonl")
    rows[0]["paraphrase"] = rows[0].pop("paraphrases")
    _write(stream_dir / "relations.jsonl", rows)
    r = _ckl("check", stream_dir)
    assert r.returncode == 2
    assert f"{stream_dir / 'relations.jsonl'}:1: field 'paraphrase': error: unknown key; did you mean 'paraphrases'?" in " ".join(r.stdout.split())


def test_ckl_pretrain_and_run_stop_on_a_checked_error_before_writing(stream_dir, tmp_path):
    facts = _rows(stream_dir / "facts.jsonl")
    _write(stream_dir / "facts.jsonl", facts + [dict(facts[0], id="dup", object="Nowhere")])
    r = _ckl("pretrain", "--world", stream_dir, "--out", tmp_path / "m", "--max-epochs", 1)
    assert r.returncode == 2 and "contradict" in r.stderr and not (tmp_path / "m").exists()
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: x\nstream: {stream_dir}\npretrain: {{max_epochs: 1}}\nmethods:\n  - name: naive\n    skip: [forget]\n")
    r = _ckl("run", exp, "--out", tmp_path / "run")
    assert r.returncode == 2 and "contradict" in r.stderr and not (tmp_path / "run").exists()


def test_warnings_wait_until_every_check_passed(stream_dir, tmp_path):
    """A warning is not printed before an error of a later check: the user sees the error first."""
    from typer.testing import CliRunner

    from ckl.app.cli import app

    rows = _rows(stream_dir / "relations.jsonl")
    rows[0]["candidates"] = []  # a warning
    _write(stream_dir / "relations.jsonl", rows)
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"stream: {stream_dir}\nmodel: {tmp_path / 'no_model'}\nmethods:\n  - name: naive\n    skip: [forget]\n")
    result = CliRunner().invoke(app, ["run", str(exp), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "no candidates" not in result.output
