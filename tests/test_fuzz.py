"""Property-based input tests: malformed relation, fact and change files, stream metadata,
general text and experiment configs, thrown at the loaders and at `ckl run`.

The property, for every input: loading either succeeds (and the stream then yields its
probes) or raises InputError naming the broken file (and a line within it when it gives
one); `ckl run` exits 0 or 2 with that one-line message, never a traceback, and leaves
its output directory unwritten. Each input is a valid tiny stream or config with one
mutation (a line replaced by text, bytes or JSON; a field dropped or set to any JSON
value; the file cut short; a line repeated).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.run.config import load_config
from ckl.core.errors import InputError
from ckl.data.stream import Stream

FIELDS = ["name", "templates", "paraphrases", "questions", "candidates", "id", "subject", "relation",
          "object", "valid_from", "valid_until", "stage", "kind"]
STREAM_FILES = ["relations.jsonl", "facts.jsonl", "changes.jsonl", "meta.json", "general_train.txt", "qa_subjects.txt", "background.txt"]
EXAMPLES = int(os.environ.get("CKL_FUZZ_EXAMPLES", "60"))  # raise it for a longer hunt
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
texts = st.text(max_size=40).map(lambda t: t.replace("\n", " ").replace("\r", " "))


@st.composite
def mutations(draw):
    """(file name, function lines -> bytes) for one mutation of one stream file."""
    name = draw(st.sampled_from(STREAM_FILES))
    op = draw(st.sampled_from(["text", "bytes", "json", "set", "drop", "truncate", "repeat", "braces"]))
    index = draw(st.integers(0, 1000))
    key = draw(st.sampled_from(FIELDS) | st.text(max_size=6))
    value = draw(json_values)
    text = draw(texts)
    blob = draw(st.binary(max_size=24))
    cut = draw(st.floats(0, 1))

    def apply(lines: list[bytes]) -> bytes:
        lines = list(lines) or [b""]
        i = index % len(lines)
        if op == "text":
            lines[i] = text.encode("utf-8", "surrogatepass")
        elif op == "bytes":
            lines[i] = blob.replace(b"\n", b" ")
        elif op == "json":
            lines[i] = json.dumps(value).encode()
        elif op in ("set", "drop", "braces"):
            try:
                obj = json.loads(lines[i])
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                if op == "drop":
                    obj.pop(key, None)
                elif op == "set":
                    obj[key] = value
                else:  # a template with a stray placeholder
                    obj["templates"] = ["{subject} {" + text.replace("}", "") + "}"]
                lines[i] = json.dumps(obj).encode()
        elif op == "repeat":
            lines.insert(i, lines[i])
        whole = b"\n".join(lines) + b"\n"
        return whole[: int(len(whole) * cut)] if op == "truncate" else whole

    return name, op, apply


@pytest.fixture(scope="module")
def base_stream(tmp_path_factory, tiny_stream):
    d = tmp_path_factory.mktemp("fuzz") / "stream"
    tiny_stream.save(d)
    return d


def _mutated(base: Path, into: Path, mutation) -> Path:
    name, _, apply = mutation
    stream = into / "stream"
    shutil.copytree(base, stream)
    path = stream / name
    lines = path.read_bytes().splitlines() if path.exists() else []
    path.write_bytes(apply(lines))
    return stream


def _check_error(err: InputError, stream: Path) -> None:
    path = Path(err.file)
    assert path.parent == stream and path.name in STREAM_FILES, f"error names {err.file}"
    assert str(err).startswith(err.file)
    if err.line is not None:
        assert 1 <= err.line <= path.read_bytes().count(b"\n") + 1


@FAST
@given(mutation=mutations())
def test_a_malformed_stream_file_is_an_input_error_naming_it(base_stream, mutation):
    with tempfile.TemporaryDirectory() as tmp:
        stream_dir = _mutated(base_stream, Path(tmp), mutation)
        try:
            stream = Stream.load(stream_dir)
        except InputError as err:
            _check_error(err, stream_dir)
            return
        assert stream.probes()  # what loads must also be usable


@CLI
@given(mutation=mutations())
def test_ckl_run_on_a_malformed_stream_exits_2_and_writes_nothing(base_stream, mutation):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stream_dir = _mutated(base_stream, tmp, mutation)
        config = {"name": "fuzz", "stream": str(stream_dir), "model": str(tmp / "no_model"),
                  "methods": [{"name": "naive", "skip": ["forget", "edit"]}]}
        (tmp / "x.yaml").write_text(yaml.safe_dump(config))
        result = CliRunner().invoke(app, ["run", str(tmp / "x.yaml"), "--out", str(tmp / "out")])
        assert result.exit_code == 2, result.output + repr(result.exception)
        assert "Traceback" not in result.output and result.output.startswith("error: ")
        named = result.output.split()[1].split(":")[0]
        assert named.startswith(str(stream_dir)) or named == str(tmp / "no_model"), result.output
        assert not (tmp / "out").exists()


VALID_CONFIG = {
    "name": "fuzz",
    "world": {"people": 12, "stages": 2, "learn_per_stage": 4, "update_per_stage": 4, "forget_per_stage": 2},
    "pretrain": {"max_epochs": 5},
    "eval": {"kinds": ["statement"]},
    "methods": [{"name": "replay", "skip": ["forget"], "train": {"epochs": 2}, "replay": {"fraction": 0.5}}],
    "seeds": [0],
}
CONFIG_KEYS = [("name",), ("world",), ("world", "people"), ("pretrain",), ("pretrain", "target"), ("eval",),
               ("eval", "kinds"), ("methods",), ("methods", 0), ("methods", 0, "name"), ("methods", 0, "train"),
               ("methods", 0, "train", "lr"), ("methods", 0, "replay", "fraction"), ("methods", 0, "skip"), ("seeds",),
               ("model",), ("stream",), ("allow_pickle",)]


@st.composite
def config_texts(draw):
    op = draw(st.sampled_from(["set", "drop", "text", "bytes", "truncate"]))
    if op in ("text", "bytes"):
        return draw(st.binary(max_size=80)) if op == "bytes" else draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    config = json.loads(json.dumps(VALID_CONFIG))
    path = draw(st.sampled_from(CONFIG_KEYS))
    parent = config
    for key in path[:-1]:
        parent = parent.setdefault(key, {}) if isinstance(parent, dict) else parent[key]
    if op == "drop":
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    elif isinstance(parent, dict):
        parent[path[-1]] = draw(json_values)
    text = yaml.safe_dump(config).encode()
    return text[: int(len(text) * draw(st.floats(0, 1)))] if op == "truncate" else text


@FAST
@given(text=config_texts())
def test_a_malformed_config_is_an_input_error_naming_the_file(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_bytes(text)
        try:
            load_config(path)
        except InputError as err:
            assert err.file == str(path) and str(err).startswith(str(path))
            if err.line is not None:
                assert 1 <= err.line <= text.count(b"\n") + 1


@CLI
@given(text=config_texts())
def test_ckl_run_on_a_malformed_config_exits_2_and_writes_nothing(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_bytes(text)
        try:
            load_config(path)
        except InputError:
            pass
        else:
            return  # a valid config would start a real run: the loader property above covers it
        result = CliRunner().invoke(app, ["run", str(path), "--out", str(Path(tmp) / "out")])
        assert result.exit_code == 2, result.output + repr(result.exception)
        assert result.output.startswith(f"error: {path}") and "Traceback" not in result.output
        assert not (Path(tmp) / "out").exists()


def _replace_line(path: Path, index: int, line: bytes) -> None:
    lines = path.read_bytes().splitlines()
    lines[index] = line
    path.write_bytes(b"\n".join(lines) + b"\n")


def _first(path: Path) -> dict:
    return json.loads(path.read_bytes().splitlines()[0])


STREAM_CASES = {
    "lone surrogate": ("facts.jsonl", lambda p: _replace_line(p, 0, json.dumps({**_first(p), "object": "x"}).replace('"x"', '"\\ud800"').encode()), 1),
    "deep nesting": ("facts.jsonl", lambda p: _replace_line(p, 1, b"[" * 100_000), 2),
    "huge stage": ("changes.jsonl", lambda p: _replace_line(p, 0, json.dumps({**_first(p), "stage": 10**12}).encode()), 1),
    "huge stage count": ("meta.json", lambda p: p.write_text(json.dumps({"stages": 10**12})), None),
    "general text not UTF-8": ("general_train.txt", lambda p: p.write_bytes(b"fine\n\xff\xfe\n"), 2),
    "stray brace": ("relations.jsonl", lambda p: _replace_line(p, 0, json.dumps({**_first(p), "templates": ["{subject} {x}"]}).encode()), 1),
    # issue 18: tracebacks, hangs and silently accepted inputs
    "valid_from beyond 4300 digits": ("facts.jsonl", lambda p: _replace_line(p, 0, json.dumps({**_first(p), "valid_from": 0}).replace(
        '"valid_from": 0', '"valid_from": ' + "9" * 5000).encode()), 1),
    "valid_from beyond any stage": ("facts.jsonl", lambda p: _replace_line(p, 0, json.dumps({**_first(p), "valid_from": 10**30}).encode()), 1),
    "stages beyond 4300 digits": ("meta.json", lambda p: p.write_text('{"stages": ' + "9" * 5000 + "}"), None),
    "a key twice in a line": ("facts.jsonl", lambda p: _replace_line(p, 1, json.dumps(_first(p))[:-1].encode() + b', "object": "other"}'), 2),
    "meta.json a list": ("meta.json", lambda p: p.write_text("[1, 2]"), 1),
    "meta.json a directory": ("meta.json", lambda p: (p.unlink(), p.mkdir()), None),
    "facts.jsonl a symlink loop": ("facts.jsonl", lambda p: (p.unlink(), os.symlink(p.name, p)), None),
    "changes.jsonl a FIFO": ("changes.jsonl", lambda p: (p.unlink(), os.mkfifo(p)), None),  # reading it would wait forever
    "template with attribute access": ("relations.jsonl", lambda p: _replace_line(p, 0, json.dumps(
        {**_first(p), "templates": ["{subject} {subject.__class__}"]}).encode()), 1),
    "template with a gigabyte format spec": ("relations.jsonl", lambda p: _replace_line(p, 0, json.dumps(
        {**_first(p), "templates": ["{subject}{subject:>1000000000}"]}).encode()), 1),
}


@pytest.mark.parametrize("case", sorted(STREAM_CASES))
def test_inputs_that_once_crashed_the_stream_loader_are_input_errors(base_stream, tmp_path, case):
    name, mutate, line = STREAM_CASES[case]
    stream = tmp_path / "stream"
    shutil.copytree(base_stream, stream)
    mutate(stream / name)
    with pytest.raises(InputError) as err:
        Stream.load(stream)
    assert err.value.file == str(stream / name) and err.value.line == line
    assert NEEDLES.get(case, "") in str(err.value)


NEEDLES = {
    "valid_from beyond 4300 digits": "more than 4300 digits", "valid_from beyond any stage": "must be at most",
    "stages beyond 4300 digits": "more than 4300 digits", "a key twice in a line": "field 'object': this key appears twice",
    "meta.json a list": "expected a JSON object", "meta.json a directory": "is a directory",
    "facts.jsonl a symlink loop": "cannot read file", "changes.jsonl a FIFO": "not a regular file",
    "template with attribute access": "may hold no braces but '{subject}'", "template with a gigabyte format spec": "may hold no braces",
}


@pytest.mark.parametrize("text,line", [
    (yaml.safe_dump({**VALID_CONFIG, "methods": [{"name": "naive", "train": None}]}).encode(), None),
    (b"name: caf\xe9\n", 1),
    (b"a: " + b"[" * 100_000, None),
])
def test_configs_that_once_crashed_the_loader_are_input_errors(tmp_path, text, line):
    path = tmp_path / "exp.yaml"
    path.write_bytes(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.file == str(path)
    if line is not None:
        assert err.value.line == line


@pytest.mark.parametrize("text,field,needle", [  # issue 18: tracebacks or silently accepted
    (yaml.safe_dump({**VALID_CONFIG, "seeds": [0]}).replace("- 0", "- " + "9" * 5000), None, "more than 4300 digits"),
    (yaml.safe_dump({**VALID_CONFIG, "seeds": [1e26]}), "seeds[0]", ""),
    (yaml.safe_dump({**VALID_CONFIG, "seeds": [10**26]}), "seeds[0]", "less than or equal to 4294967295"),
    (yaml.safe_dump({**VALID_CONFIG, "methods": [{"name": "lora+lora", "skip": ["forget"]}]}), "methods[0].name", "'lora' is listed twice"),
    (yaml.safe_dump(VALID_CONFIG) + "methods:\n- name: naive\n", "methods", "appears twice"),
    (yaml.safe_dump({**VALID_CONFIG, "methods": [{"name": "naive", "skip": ["forget"], "train": {"epochs": 10**21}}]}),
     "methods[0].train.epochs", "epochs must be at most 1,000,000,000"),
])
def test_configs_with_huge_numbers_a_part_twice_or_a_key_twice_are_refused(tmp_path, text, field, needle):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.file == str(path) and err.value.field == field and needle in err.value.message
    if field == "methods":
        assert err.value.line == text.count("\n") - 1  # the second `methods:`, above its one item
