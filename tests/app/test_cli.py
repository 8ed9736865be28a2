"""The `ckl` command end to end on a tiny world: world -> pretrain -> run -> show."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_PRETRAIN

CKL = [sys.executable, "-m", "ckl"]


def ckl(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([*CKL, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.heavy  # started first (tests/conftest.py)
def test_world_pretrain_run_show_end_to_end(tmp_path):
    r = ckl("world", "--out", tmp_path / "w", "--people", 12, "--learn", 4, "--update", 4, "--forget", 2, "--seed", 1,
            "--background-people", 6, "--min-probe-word-count", 0)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "w" / "facts.jsonl").exists()
    p = TINY_PRETRAIN
    r = ckl("pretrain", "--world", tmp_path / "w", "--out", tmp_path / "m", "--target", 0.9, "--max-epochs", p["max_epochs"],
            "--n-layer", p["n_layer"], "--n-embd", p["n_embd"], "--n-head", p["n_head"], "--knowledge-target", 0)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "model.safetensors").exists()
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "name: cli\nstream: w\nmodel: m\nmethods:\n  - name: naive\n    skip: [forget]\n    train: {epochs: 2}\n"
        "  - name: lora+replay\n    skip: [forget]\n    train: {epochs: 2}\n    lora: {r: 4}\neval: {kinds: [statement]}\n"
    )
    r = ckl("run", exp, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "naive" in r.stdout and "lora+replay" in r.stdout and "retention" in r.stdout
    assert "NOT applied" in r.stdout  # the forget requests are reported, not silently skipped
    # not a terminal: plain progress lines as the stages finish, each with an ETA, and no bars
    assert "naive (seed 0): 1/2 stages" in r.stdout and "lora+replay (seed 0): 2/2 stages" in r.stdout
    assert "ETA" in r.stdout and "━" not in r.stdout
    r = ckl("show", tmp_path / "run")
    assert r.returncode == 0 and "invariant" in r.stdout and "FUAR" in r.stdout
    r = ckl("show", tmp_path / "run", "--markdown")
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and lines[0].startswith("| method | seeds | retention")
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| naive", "| lora+replay"]
    assert "(base model (row 0): invariant accuracy " in r.stdout and "held-out perplexity" in r.stdout
    written = json.loads((tmp_path / "run" / "summary.json").read_text())  # ckl run writes summary.json too
    assert set(written["methods"]) == {"naive", "lora+replay"} and written["weak_base"] is None
    assert written["methods"]["naive"]["retention"] is not None and written["environments"][0]["torch_threads"] >= 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["methods"][1]["lora"] == {"r": 4}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "missing.yaml"], "missing.yaml: config file not found"),
        (["show", "nowhere"], "no results.sqlite"),
        (["pretrain", "--world", "nowhere", "--out", "m"], "stream directory not found"),
        (["world", "--out", "w", "--people", "0"], "people"),
        (["world", "--out", "w", "--qa-fraction", "0"], "--qa-fraction must be in (0, 1]"),
        (["world", "--out", "w", "--people", "1", "--update", "0", "--qa-fraction", "0.4"], "question-answer half of 0 people"),
        (["world", "--out", "w", "--min-probe-word-count", "-1"], "--min-probe-word-count must be >= 0"),
        (["world", "--out", "w", "--background-people", "0"], "--min-probe-word-count=20: "),
        (["world", "--out", "w", "--people", "400"], "--distinct-first-names gives 480 people"),
    ],
)
def test_user_mistakes_exit_2_with_one_message_and_no_traceback(tmp_path, args, needle):
    r = ckl(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_bad_config_key_exits_2_naming_line_and_key_and_writes_nothing(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: x\nworld: {people: 30}\nmethods:\n  - name: replay\n    replay: {fraction: 2}\n")
    r = ckl("run", exp, "--out", tmp_path / "run")
    assert r.returncode == 2
    assert "exp.yaml:5: field 'methods[0].replay.fraction'" in " ".join(r.stderr.split())
    assert not (tmp_path / "run").exists()


def test_an_unexpected_error_is_one_line_naming_the_command_with_a_hint_to_rerun_with_debug(monkeypatch):
    from typer.testing import CliRunner

    import ckl.methods.base
    from ckl.app.cli import app

    def broken():
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(ckl.methods.base, "load_builtin", broken)
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(" ".join(lines)) < 400 and "Traceback" not in result.output
    assert "ckl methods failed unexpectedly (KeyError: 'a bug deep inside')" in " ".join(result.output.split())
    assert "ckl --debug methods" in result.output
    debug = CliRunner().invoke(app, ["--debug", "methods"])
    assert isinstance(debug.exception, KeyError)  # --debug lets the traceback through


def test_methods_lists_every_part_with_supported_kinds():
    from ckl.methods.base import load_builtin

    r = ckl("methods")
    assert r.returncode == 0
    rows = {}
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 4 and cells[1] in ("part", "method"):
            rows[cells[0]] = (cells[1], cells[2])
    # one row per registered name, with its family and exactly the kinds it supports
    registry = load_builtin()
    assert set(rows) == set(registry)
    assert rows["naive"] == ("part", "learn, update, edit, corpus")  # a training method: facts and domain text
    assert rows["ga"] == ("part", "learn, update, edit, forget, corpus")  # an unlearning part adds forget
    assert rows["rome"] == ("method", "update, edit")  # an editor: only what it declares
    assert rows["ike"] == ("method", "learn, update, edit")


def test_bad_fact_file_exits_2_naming_file_line_and_field(tmp_path, tiny_stream):
    tiny_stream.save(tmp_path / "w")
    lines = (tmp_path / "w" / "facts.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    bad["relation"] = "likes"
    lines[2] = json.dumps(bad)
    (tmp_path / "w" / "facts.jsonl").write_text("\n".join(lines) + "\n")
    r = ckl("pretrain", "--world", tmp_path / "w", "--out", tmp_path / "m")
    assert r.returncode == 2
    assert "facts.jsonl:3: field 'relation': unknown relation 'likes'" in " ".join(r.stderr.split())
    assert not (tmp_path / "m").exists()


def test_run_with_model_flag_uses_that_model_instead_of_pretraining(tmp_path, tiny_stream, tiny_model_dir):
    tiny_stream.save(tmp_path / "w")
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: m\nstream: w\npretrain: {max_epochs: 500}\nmethods:\n  - name: naive\n    skip: [forget]\n    train: {epochs: 1}\neval: {kinds: [statement]}\n")
    r = ckl("run", exp, "--out", tmp_path / "run", "--model", tiny_model_dir)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run" / "base_model").exists()  # nothing was pretrained
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == str(tiny_model_dir) and config["pretrain"] is None
    r = ckl("run", exp, "--out", tmp_path / "run2", "--model", tmp_path / "nope")
    assert r.returncode == 2 and "no config.json" in r.stderr


def test_pretrain_target_facts_option_is_checked_before_anything_is_written(tmp_path, tiny_stream):
    tiny_stream.save(tmp_path / "w")
    r = ckl("pretrain", "--world", tmp_path / "w", "--out", tmp_path / "m", "--target-facts", "everything", "--batch-size", 8)
    assert r.returncode == 2 and "target_facts" in r.stderr and "'everything'" in r.stderr
    assert not (tmp_path / "m").exists()


def test_version_prints_the_package_version():
    from ckl import __version__

    r = ckl("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ckl {__version__}"


def test_world_two_hop_and_dated_write_the_chains_and_dates_to_ask_through(tmp_path):
    r = ckl("world", "--out", tmp_path / "w", "--people", 12, "--learn", 4, "--update", 4, "--forget", 2,
            "--background-people", 6, "--min-probe-word-count", 0, "--two-hop", "--dated")
    assert r.returncode == 0, r.stderr
    from ckl.data.facts import ALL_PROBE_KINDS
    from ckl.data.stream import Stream

    stream = Stream.load(tmp_path / "w")
    assert {"headquarters", "campus"} <= set(stream.relations) and stream.relations["employer"].two_hop
    assert stream.relations["employer"].dated and not stream.relations["birth_city"].dated
    assert {"two_hop", "as_of"} <= {p.kind for p in stream.probes(kinds=ALL_PROBE_KINDS)}


def test_world_and_pretrain_refuse_a_non_empty_output_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = ckl("world", "--out", empty, "--people", 12, "--learn", 4, "--update", 4, "--forget", 2, "--background-people", 6, "--min-probe-word-count", 0)
    assert r.returncode == 0 and (empty / "facts.jsonl").exists()  # an empty directory is fine
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    for args in (("world", "--out", taken, "--people", 12), ("pretrain", "--world", empty, "--out", taken)):
        r = ckl(*args)
        assert r.returncode == 2 and "exists and is not an empty directory" in r.stderr, r.stderr
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]  # nothing written beside the user's file
    (tmp_path / "file").write_text("x")
    assert ckl("world", "--out", tmp_path / "file").returncode == 2


def test_ckl_pretrain_offers_every_pretraining_option_named_as_a_flag():
    import dataclasses

    from typer.testing import CliRunner

    from ckl.app.cli import app
    from ckl.train.config import PretrainConfig

    shown = CliRunner().invoke(app, ["pretrain", "--help"], env={"COLUMNS": "300"})
    for field in dataclasses.fields(PretrainConfig):  # one definition: a new field is a new flag
        assert "--" + field.name.replace("_", "-") in shown.output, field.name


def test_ckl_update_offers_every_request_field_as_a_flag_with_its_default_and_help():
    import dataclasses

    from typer.testing import CliRunner

    from ckl.app.cli import app
    from ckl.app.update import UpdateRequest

    shown = CliRunner().invoke(app, ["update", "--help"], env={"COLUMNS": "400"}).output
    for field in dataclasses.fields(UpdateRequest):  # one definition: a new field is a new flag
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        line = next((ln for ln in shown.splitlines() if f" {flag} " in ln), None)
        assert line is not None, field.name
        assert field.metadata["help"][:30] in line, field.name
    assert "[default: 200]" in next(ln for ln in shown.splitlines() if "--keep-size" in ln)
    assert "[required]" in next(ln for ln in shown.splitlines() if "--relations" in ln)


@pytest.mark.parametrize("command", [[], ["update"], ["run"], ["world"]])
def test_help_gives_flags_no_value_label(command):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    shown = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).output
    help_line = next(ln for ln in shown.splitlines() if "--help" in ln)
    assert "<bool>" not in shown and "Show this message" in help_line
