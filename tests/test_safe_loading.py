"""Safe loading: a model directory's own Python code never runs unless the user allows it.

(Pickle weights refused without opt-in: tests/model/test_lm.py; YAML object tags refused:
tests/run/test_config.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from ckl.model import lm
from ckl.app.cli import app
from ckl.core.errors import InputError


def _model_with_code(tmp_path, tiny_model_dir):
    """A copy of the tiny model whose config asks transformers to import `evil.py`, which
    would leave a marker file behind if it ever ran."""
    d = tmp_path / "with_code"
    shutil.copytree(tiny_model_dir, d)
    marker = tmp_path / "code_ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((d / "config.json").read_text())
    config.update(model_type="evil_lm", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (d / "config.json").write_text(json.dumps(config))
    return d, marker


def test_a_model_that_needs_its_own_code_is_refused_and_its_code_never_runs(tmp_path, tiny_model_dir):
    d, marker = _model_with_code(tmp_path, tiny_model_dir)
    with pytest.raises(InputError) as err:
        lm.load(d)
    assert err.value.field == "auto_map" and "trust_remote_code: true" in str(err.value)
    assert str(d / "config.json") in str(err.value)
    assert not marker.exists()


def test_ckl_run_on_such_a_model_exits_2_with_one_message(tmp_path, tiny_stream, tiny_model_dir):
    d, marker = _model_with_code(tmp_path, tiny_model_dir)
    tiny_stream.save(tmp_path / "stream")
    config = {"name": "x", "stream": str(tmp_path / "stream"), "model": str(d),
              "methods": [{"name": "naive", "skip": ["forget"], "train": {"epochs": 1}}]}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "trust_remote_code" in result.output and "Traceback" not in result.output
    assert not marker.exists()


def test_auto_map_on_a_known_model_type_is_refused_not_ignored(tmp_path, tiny_model_dir, tiny_stream):
    """Issue 18: with remote code off, transformers ignored `auto_map` on a model_type it
    knows (gpt2) and loaded the model with its own class; now it is refused, naming the
    option that allows it."""
    d = tmp_path / "gpt2_with_code"
    shutil.copytree(tiny_model_dir, d)
    config = json.loads((d / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    config["auto_map"] = {"AutoModelForCausalLM": "custom.CustomModel"}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as err:
        lm.load(d)
    assert (err.value.file, err.value.field) == (str(d / "config.json"), "auto_map")
    assert "`trust_remote_code: true`" in err.value.message and "delete `auto_map`" in err.value.message
    with pytest.raises(InputError):
        lm.check_directory(d)  # what `ckl run` checks before it writes anything
    tiny_stream.save(tmp_path / "stream")
    exp = {"name": "x", "stream": str(tmp_path / "stream"), "model": str(d),
           "methods": [{"name": "naive", "skip": ["forget"], "train": {"epochs": 1}}]}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(exp))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "trust_remote_code" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_auto_map_in_the_tokenizer_config_is_refused_too(tmp_path, tiny_model_dir):
    d = tmp_path / "tokenizer_with_code"
    shutil.copytree(tiny_model_dir, d)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["custom.CustomTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as err:
        lm.load(d)
    assert (err.value.file, err.value.field) == (str(d / "tokenizer_config.json"), "auto_map")
    assert "trust_remote_code" in err.value.message
