"""Property over the CLI (issue 18): no generated input reaches the user as a traceback.

Hypothesis generates values for experiment configs (any YAML scalar or collection at any
known key), lines of the files `ckl update` and `ckl import` read, and the numbers given
to `ckl world`. For every input the command ends with exit code 0 or 2 (a user mistake:
one message), never with an uncaught exception and never with the top-level handler's
"failed unexpectedly" (exit 1): that handler stops a traceback, but an input that reaches
it was not checked. Inputs stay tiny and no command trains: runs name a missing model
(every other check comes first), updates a model directory without weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.data.facts import fact_row, jsonl_text, relation_row

EXAMPLES = int(os.environ.get("CKL_FUZZ_EXAMPLES", "60")) // 3 or 1  # few: each runs a command
CLI = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# YAML scalars as written in a file: the awkward ones by hand, then anything hypothesis makes.
YAML_SCALARS = st.sampled_from([
    ".nan", ".inf", "-.inf", "1e400", "-1", "0", "0.0", "1e30", "1e-400", "9" * 5000, "true", "null", "~", "''", "'x'",
    "[]", "{}", "[1, 2]", "{a: 1}", "!!python/object/apply:os.system ['true']", "!!binary aGk=", "&a x", "*a", "'{subject}'",
    "0x10", "0o17", "1_000", "2001-12-14", "'../../etc'", "-0", "'\\ud800'", "\"\\ud800\"",
]) | st.integers(-(10**12), 10**12).map(str) | st.floats().map(repr) | st.text(max_size=10).map(json.dumps)

CONFIG_KEYS = [
    ("name",), ("seeds",), ("seeds", 0), ("model",), ("stream",), ("allow_pickle",), ("trust_remote_code",),
    ("world", "people"), ("world", "stages"), ("world", "qa_fraction"), ("world", "min_probe_word_count"), ("world", "seed"),
    ("pretrain", "lr"), ("pretrain", "target"), ("pretrain", "copy_fraction"), ("pretrain", "block_size"), ("pretrain", "max_seconds"),
    ("eval", "kinds"), ("eval", "batch_size"), ("eval", "max_candidates"), ("eval", "metric"), ("eval", "attack"), ("eval", "unlearning"),
    ("methods", 0, "name"), ("methods", 0, "skip"), ("methods", 0, "label"), ("methods", 0, "train", "lr"), ("methods", 0, "train", "epochs"),
    ("methods", 0, "train", "block_size"), ("methods", 0, "train", "until"), ("methods", 0, "train", "max_grad_norm"),
    ("methods", 0, "replay", "fraction"), ("methods", 0, "replay", "policy"), ("methods", 0, "ewc", "strength"), ("methods", 0, "x"),
]


def _check(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "failed unexpectedly" not in result.output, result.output


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


@CLI
@given(key=st.sampled_from(CONFIG_KEYS), value=YAML_SCALARS, method=st.sampled_from(["replay", "naive", "ewc+replay", "lora", "rome"]))
def test_ckl_run_on_generated_config_values_never_shows_a_traceback(key, value, method):
    config = {"name": "fuzz", "world": {"people": 12, "stages": 1, "learn_per_stage": 2, "update_per_stage": 2, "forget_per_stage": 1,
                                         "background_people": 4, "min_probe_word_count": 0},
              "model": "PLACEHOLDER_MODEL", "seeds": [0],
              "methods": [{"name": method, "skip": ["forget", "edit"], "train": {"epochs": 1}}]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        node = config
        for part in key[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        if isinstance(node, list) and key[-1] >= len(node):
            return
        node[key[-1]] = "PLACEHOLDER_VALUE"
        text = yaml.safe_dump(config).replace("PLACEHOLDER_MODEL", str(tmp / "no_model"))
        text = text.replace("PLACEHOLDER_VALUE", value.replace("PLACEHOLDER", ""))
        (tmp / "x.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        result = _invoke(["run", str(tmp / "x.yaml"), "--out", str(tmp / "out")])
        _check(result)
        if key != ("model",):  # every valid config stops at the missing model, before writing
            assert result.exit_code == 2 and not (tmp / "out").exists(), result.output


@pytest.fixture(scope="module")
def update_files(tmp_path_factory, tiny_stream):
    d = tmp_path_factory.mktemp("cli_fuzz")
    (d / "relations.jsonl").write_text(jsonl_text(relation_row(r) for r in tiny_stream.relations.values()))
    (d / "facts.jsonl").write_text(jsonl_text(fact_row(f) for f in tiny_stream.base))
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text('{"model_type": "gpt2"}')  # no weights: a valid request stops at loading it
    return d, tiny_stream


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@CLI
@given(which=st.sampled_from(["learn", "update", "forget", "keep"]), field=st.sampled_from(["id", "subject", "relation", "object", "old_object", "x"]),
       value=json_values, raw=st.none() | st.binary(max_size=30), gate=st.sampled_from(["acquisition>=0.5", "retention>=nan", "x>=1", "retention>=0.9"]))
def test_ckl_update_on_generated_fact_lines_never_shows_a_traceback(update_files, which, field, value, raw, gate):
    d, stream = update_files
    base = stream.base[0]
    line = {"learn": {"id": "new-fact", "subject": "Zed Q", "relation": base.relation, "object": base.object},
            "update": {"id": base.id, "object": "Somewhere Else"}, "forget": {"id": base.id},
            "keep": fact_row(stream.base[1])}[which]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / f"{which}.jsonl"
        path.write_bytes(raw if raw is not None else (json.dumps({**line, field: value}) + "\n").encode("utf-8", "surrogatepass"))
        args = ["update", "--model", str(d / "model"), "--out", str(tmp / "out"), "--relations", str(d / "relations.jsonl"),
                "--facts", str(d / "facts.jsonl"), f"--{which}", str(path), "--gate", gate]
        if which == "keep":
            args += ["--forget", str(tmp / "forget.jsonl")]
            (tmp / "forget.jsonl").write_text(json.dumps({"id": stream.base[2].id}) + "\n")
        result = _invoke(args)
        _check(result)
        assert result.exit_code == 2 and not (tmp / "out").exists()  # at the latest, the model has no weights


@CLI
@given(rows=st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6), st.text(max_size=40)), max_size=4),
       header=st.booleans(), limit=st.sampled_from(["0", "1", "-1", "9" * 30]), words=st.sampled_from(["1", "0", "32", "-3"]))
def test_ckl_import_pile_on_generated_csv_lines_never_shows_a_traceback(rows, header, limit, words):
    import csv
    import io

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if header:
            writer.writerow(["doc_id", "corpus", "text"])
        writer.writerows(rows)
        (tmp / "t.csv").write_text(buffer.getvalue(), encoding="utf-8", errors="surrogatepass")
        result = _invoke(["import", "pile", str(tmp / "t.csv"), "--out", str(tmp / "s"), "--limit", limit, "--prefix-words", words])
        _check(result)


@CLI
@given(record=st.dictionaries(st.sampled_from(["case_id", "prompt", "subject", "ground_truth", "target_new", "rephrase_prompt",
                                               "locality_prompt", "locality_ground_truth", "x"]), json_values, max_size=9),
       complete=st.booleans())
def test_ckl_import_counterfact_on_generated_records_never_shows_a_traceback(record, complete):
    good = {"case_id": 0, "prompt": "The mother tongue of Ada Vale is", "subject": "Ada Vale", "ground_truth": "French",
            "target_new": "English", "rephrase_prompt": "Ada Vale grew up speaking", "locality_prompt": "Bo Lind speaks",
            "locality_ground_truth": "French"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = [good, {**good, **record} if complete else record]
        (tmp / "cf.json").write_text(json.dumps(records), encoding="utf-8", errors="surrogatepass")
        result = _invoke(["import", "counterfact", str(tmp / "cf.json"), "--out", str(tmp / "s")])
        _check(result)


NUMBERS = st.sampled_from(["0", "1", "-1", "2", "3", "1e12", "9" * 30, "nan", "inf", "x", "1.5"]) | st.integers(-3, 12).map(str)


@CLI
@given(people=NUMBERS, stages=NUMBERS, learn=NUMBERS, qa=st.sampled_from(["0.5", "nan", "inf", "-inf", "0", "1", "2", "1e-300"]),
       background=NUMBERS, min_count=st.sampled_from(["0", "-1", "1e3", "5"]))
def test_ckl_world_on_generated_numbers_never_shows_a_traceback(people, stages, learn, qa, background, min_count):
    with tempfile.TemporaryDirectory() as tmp:
        result = _invoke(["world", "--out", str(Path(tmp) / "w"), "--people", people, "--stages", stages, "--learn", learn,
                          "--update", "1", "--forget", "1", "--qa-fraction", qa, "--background-people", background,
                          "--min-probe-word-count", min_count])
        _check(result)


def test_found_by_this_fuzzing_a_bad_option_value_is_a_usage_error_not_an_unexpected_failure(tmp_path):
    # typer parses with its own copy of click: its BadParameter was reported as "ckl world failed unexpectedly", exit 1
    result = _invoke(["world", "--out", str(tmp_path / "w"), "--people", "1e12"])
    assert result.exit_code == 2 and "Invalid value for '--people'" in result.output and "unexpectedly" not in result.output
    assert not (tmp_path / "w").exists()


def test_found_by_this_fuzzing_a_surrogate_escape_in_a_yaml_config_is_an_input_error(tmp_path):
    # model: "\ud800\udc00" reached os.stat as a str no file system can encode (UnicodeEncodeError, exit 1)
    path = tmp_path / "x.yaml"
    path.write_text('name: x\nworld: {people: 12}\nmodel: "\\ud800\\udc00"\nmethods: [{name: naive}]\n')
    result = _invoke(["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{path}:3: a string holds an unpaired surrogate" in result.output, result.output
    assert not (tmp_path / "out").exists()
