"""CounterFact and zsRE importers: the editing stream they build (K0 = true facts and
neighbourhood facts, stages = batches of edits, cohorts for every editing metric) and the
rejection of malformed records with file, line, record number and field."""

import json

import pytest

from ckl.core.errors import InputError
from ckl.data.formats.counterfact import counterfact_stream
from ckl.data.formats.registry import import_to
from ckl.data.formats.zsre import zsre_stream
from ckl.data.stream import Stream

CF = {
    "case_id": 7, "prompt": "The mother tongue of Ada Vale is", "subject": "Ada Vale", "ground_truth": "French",
    "target_new": "English", "rephrase_prompt": "Ada Vale grew up speaking", "locality_prompt": "Bo Lind speaks",
    "locality_ground_truth": "French",
}
ZS = {
    "subject": "UniFirst", "src": "What is the product made by UniFirst?", "rephrase": "What does UniFirst make?",
    "alt": "unmanned aircraft", "answers": ["uniform"], "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare",
}


def write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


def cf(i, **changes):
    return {**CF, "case_id": i, "subject": f"Ada Vale{i}", "prompt": f"The mother tongue of Ada Vale{i} is",
            "rephrase_prompt": f"Ada Vale{i} grew up speaking", **changes}


def test_counterfact_stream_is_sequential_editing(tmp_path):
    stream = counterfact_stream(write(tmp_path, [cf(i) for i in range(5)]), edits=4, batch=2, untouched=1)
    assert stream.T == 2 and [len(c.edit) for c in stream.stages] == [2, 2]
    assert len(stream.base) == 10  # 5 true facts + 5 neighbourhood facts
    r = stream.stages[0].edit[0]
    assert (r.fact.object, r.old_object, r.kind) == ("English", "French", "edit")
    probes = {p.id: p for p in stream.probes(kinds=("statement", "paraphrase"), max_candidates=2)}
    edit = probes["stage1/cf0/statement"]
    assert (edit.prompt, edit.answer, edit.candidates) == ("The mother tongue of Ada Vale0 is", "English", ("English", "French"))
    assert probes["stage1/cf0/paraphrase"].prompt == "Ada Vale0 grew up speaking"
    local = probes["local1/cf0/neighbour/statement"]
    assert (local.prompt, local.answer, local.candidates) == ("Bo Lind speaks", "French", ("English", "French"))
    assert probes["stale2/cf3/statement"].answer == "French"
    assert {p.cohort for p in probes.values()} == {"stage1", "stage2", "stale1", "stale2", "local1", "local2", "invariant"}
    assert "invariant/cf4/statement" in probes and "invariant/cf4/neighbour/statement" in probes


def test_written_stream_loads_back_identically(tmp_path):
    out = tmp_path / "stream"
    stream = import_to("counterfact", write(tmp_path, [cf(i) for i in range(3)]), out, {"batch": 2})
    again = Stream.load(out)
    assert again.probes() == stream.probes()
    with pytest.raises(InputError, match="not an empty directory"):
        import_to("counterfact", write(tmp_path, [cf(0)]), out, {"batch": 1})


@pytest.mark.parametrize("record, field, message", [
    (cf(1, target_new=""), "target_new", "record 2: must be a non-empty string"),
    ({k: v for k, v in cf(1).items() if k != "subject"}, "subject", "record 2: missing required field"),
    (cf(1, prompt="The mother tongue of someone is"), "prompt", "record 2: does not contain the subject"),
    (cf(1, case_id="x"), "case_id", "record 2: must be an integer"),
    (cf(0), "case_id", "record 2: duplicate case_id 0"),
    (cf(1, target_new="French"), "target_new", "record 2: equals ground_truth"),
    ([1, 2], None, "record 2: expected a JSON object"),
])
def test_counterfact_rejects_malformed_records(tmp_path, record, field, message):
    path = write(tmp_path, [cf(0), record])
    with pytest.raises(InputError) as err:
        counterfact_stream(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 3, field)
    assert message in err.value.message


def test_zsre_stream_and_rejections(tmp_path):
    stream = zsre_stream(write(tmp_path, [ZS, {**ZS, "alt": ""}, {**ZS, "subject": "Acme", "src": "What does Acme make?", "rephrase": "Acme makes what?"}]), batch=1)
    assert stream.T == 2  # the record asking for no change (empty alt) is skipped
    p = {p.id: p for p in stream.probes()}["stage1/zsre1/statement"]
    assert (p.prompt, p.answer) == ("What is the product made by UniFirst?", "unmanned aircraft")
    path = write(tmp_path, [ZS, {**ZS, "answers": []}], "bad.json")
    with pytest.raises(InputError) as err:
        zsre_stream(path)
    assert (err.value.line, err.value.field) == (3, "answers") and "record 2" in err.value.message


def test_counts_that_do_not_fit_are_input_errors(tmp_path):
    path = write(tmp_path, [cf(i) for i in range(3)])
    with pytest.raises(InputError, match="file has 3 records"):
        counterfact_stream(path, edits=3, untouched=1)


def test_the_shipped_real_samples_import():
    """The first 300 records of the real CounterFact and zsRE files (shipped with ckl)."""
    from ckl.data.sources import sample_path

    cf_stream = counterfact_stream(sample_path("counterfact-edit-300.json"), edits=300, batch=100)
    assert cf_stream.T == 3 and len(cf_stream.base) == 600
    # the records fall into far fewer template groups than records (CounterFact has 34
    # relations); nearly every neighbourhood prompt is a known template about another subject
    assert cf_stream.meta["groups"] == 38
    neighbours = [f for f in cf_stream.base if f.id.endswith("/neighbour")]
    assert sum(cf_stream.relations[f.relation].probe_template is not None for f in neighbours) >= 0.9 * len(neighbours)
    zsre = zsre_stream(sample_path("zsre_mend_train-300.json"), batch=100)
    assert len(zsre.records()) == 293  # 7 records have no usable new answer


def test_cli_import_writes_a_stream_or_exits_2_writing_nothing(tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    good, bad = write(tmp_path, [cf(i) for i in range(4)]), write(tmp_path, [cf(0), cf(1, subject="")], "bad.json")
    result = CliRunner().invoke(app, ["import", "counterfact", str(good), "--out", str(tmp_path / "s"), "--edits", "4", "--batch", "2"])
    assert result.exit_code == 0 and Stream.load(tmp_path / "s").T == 2
    result = CliRunner().invoke(app, ["import", "counterfact", str(bad), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and not (tmp_path / "t").exists()
    assert "record 2" in result.output and "subject" in result.output


def forms_cases():
    """Two records of one relation with different templates, linked by a neighbourhood
    prompt that is the second template filled with another subject; a third record of
    another template whose new target nobody is taught."""
    return [
        cf(0, prompt="The mother tongue of Ada Vale0 is", locality_prompt="Bo Lind speaks", target_new="English"),
        cf(1, subject="Cy Moor", prompt="Cy Moor speaks", rephrase_prompt="Cy Moor grew up speaking", ground_truth="German",
           target_new="Klingon", locality_prompt="nq: unrelated", locality_ground_truth="x"),
        cf(2, subject="Di Roe", prompt="Di Roe speaks", rephrase_prompt="Di Roe grew up speaking", ground_truth="English",
           target_new="French", locality_prompt="nq: unrelated too", locality_ground_truth="y"),
    ]


def test_facts_are_taught_in_every_form_of_their_group(tmp_path):
    stream = counterfact_stream(write(tmp_path, forms_cases()), batch=3)
    rel = stream.relations["cf0"]
    # its own prompt first, then the group's other template (linked through the neighbourhood prompt)
    assert rel.templates == ("The mother tongue of {subject} is", "{subject} speaks")
    assert rel.questions == ("The mother tongue of {subject} is what?", "{subject} speaks what?")
    assert rel.probe_template == "The mother tongue of {subject} is"
    # the neighbourhood fact is that template's fact about Bo Lind, in the same forms
    neighbour = next(f for f in stream.base if f.id == "cf0/neighbour")
    assert (neighbour.subject, stream.relations[neighbour.relation].probe_template) == ("Bo Lind", "{subject} speaks")
    assert stream.meta["groups"] == 1
    probes = {p.id: p for p in stream.probes(kinds=("statement", "paraphrase", "question"), max_candidates=2)}
    assert probes["stage1/cf0/statement"].prompt == "The mother tongue of Ada Vale0 is"  # CounterFact's own prompt
    assert probes["local1/cf0/neighbour/statement"].prompt == "Bo Lind speaks"
    assert probes["stage1/cf0/question"].prompt == "Question: The mother tongue of Ada Vale0 is what? Answer:"
    # the rephrased prompt is probed, never trained
    from ckl.data.stream import render_documents
    import random
    text = " ".join(render_documents(stream.base, stream.relations, random.Random(0), questions=None))
    assert "Ada Vale0 speaks French." in text or "The mother tongue of Ada Vale0 is French." in text
    assert "grew up speaking" not in text


def test_new_targets_come_from_taught_answers(tmp_path):
    path = write(tmp_path, forms_cases())
    stream = counterfact_stream(path, batch=3)
    new = {r.fact.id: r.fact.object for r in stream.records()}
    # "Klingon" is no K0 fact's object: replaced by an object of its group other than its truth (German)
    assert new["cf1"] in {"French", "English"} and stream.meta["retargeted"] == {"cf1": "Klingon"}
    assert stream.relations["cf1"].candidates == ("German", new["cf1"])
    assert (new["cf0"], new["cf2"]) == ("English", "French")  # taught already: kept
    assert counterfact_stream(path, batch=3) .records() == stream.records()  # seeded
    kept = counterfact_stream(path, batch=3, taught_targets=False)
    assert {r.fact.id: r.fact.object for r in kept.records()}["cf1"] == "Klingon" and kept.meta["retargeted"] == {}


def test_single_form_is_the_record_sentence_only(tmp_path):
    stream = counterfact_stream(write(tmp_path, forms_cases()), batch=3, forms=False)
    assert stream.relations["cf0"].templates == ("The mother tongue of {subject} is",)
    assert stream.relations["cf0"].questions == () and stream.relations["cf0"].probe_template is None
    assert next(f for f in stream.base if f.id == "cf0/neighbour").subject == "Bo Lind speaks"


def test_a_subject_with_two_facts_in_a_group_keeps_its_own_templates(tmp_path):
    cases = forms_cases() + [cf(3, subject="Cy Moor", prompt="The mother tongue of Cy Moor is", ground_truth="Dutch",
                                rephrase_prompt="Cy Moor was raised speaking", locality_prompt="nq: third", locality_ground_truth="z")]
    stream = counterfact_stream(write(tmp_path, cases), batch=4)
    assert stream.relations["cf1"].templates == ("{subject} speaks",)
    assert stream.relations["cf3"].templates == ("The mother tongue of {subject} is",)
    assert stream.relations["cf2"].templates == ("{subject} speaks", "The mother tongue of {subject} is")


def test_probe_template_round_trips_and_must_be_a_template(tmp_path):
    out = tmp_path / "stream"
    stream = import_to("counterfact", write(tmp_path, forms_cases()), out, {"batch": 3})
    assert Stream.load(out).relations == stream.relations
    rows = [json.loads(line) for line in (out / "relations.jsonl").read_text().splitlines()]
    rows[0]["probe_template"] = "{subject} sings"
    (out / "relations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as err:
        Stream.load(out)
    assert (err.value.line, err.value.field) == (1, "probe_template")


def test_cli_import_options(tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    path = write(tmp_path, forms_cases())
    result = CliRunner().invoke(app, ["import", "counterfact", str(path), "--out", str(tmp_path / "a"), "--batch", "3"])
    assert result.exit_code == 0 and "1 new target(s) replaced" in result.output
    result = CliRunner().invoke(app, ["import", "counterfact", str(path), "--out", str(tmp_path / "b"), "--batch", "3",
                                      "--single-form", "--keep-targets"])
    assert result.exit_code == 0 and "replaced" not in result.output
    assert Stream.load(tmp_path / "b").relations["cf0"].templates == ("The mother tongue of {subject} is",)
