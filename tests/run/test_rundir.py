"""Output directories are owned: a run writes only where it cannot destroy anything.

Regression tests for issue 18's severe findings 1 and 4: `ckl run --out` pointed at the
config's own model directory overwrote the model's config.json, and `name: "../../etc"`
wrote the run outside `runs/`.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.run.config import ExperimentConfig
from ckl.core.errors import InputError
from ckl.run.experiment import run_experiment


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory, tiny_stream):
    d = tmp_path_factory.mktemp("stream")
    tiny_stream.save(d)
    return d


def _config(stream_dir, model_dir, name="t"):
    return {
        "name": name, "stream": str(stream_dir), "model": str(model_dir), "eval": {"kinds": ["statement"]},
        "methods": [{"name": "naive", "skip": ["forget"], "train": {"epochs": 1, "lr": 3e-3}}],
    }


def _digest(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def _ckl(args, cwd: Path):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def test_run_out_pointed_at_the_model_directory_is_refused_and_the_model_is_untouched(tmp_path, stream_dir, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = _digest(model)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_config(stream_dir, model)))
    result = _ckl(["run", exp, "--out", model], tmp_path)
    assert result.exit_code == 2, result.output
    assert "is a model directory" in " ".join(result.output.split()) and "--out" in result.output
    assert _digest(model) == before  # config.json not overwritten, no results.sqlite added


@pytest.mark.parametrize("kind", ["file", "other files", "the input stream"])
def test_run_out_naming_a_file_or_a_foreign_directory_is_refused_before_anything_is_written(tmp_path, stream_dir, tiny_model_dir, kind):
    if kind == "file":
        out = tmp_path / "notes.txt"
        out.write_text("mine")
    elif kind == "other files":
        out = tmp_path / "thesis"
        out.mkdir()
        (out / "chapter1.tex").write_text("mine")
    else:
        out = tmp_path / "stream"
        shutil.copytree(stream_dir, out)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()
    config = ExperimentConfig.from_dict(_config(stream_dir, tiny_model_dir))
    with pytest.raises(InputError, match="not a directory|not a ckl run directory"):
        run_experiment(config, out, say=lambda m: None)
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()) == before


def test_a_run_directory_is_marked_first_and_only_its_own_experiment_reuses_it(tmp_path, stream_dir, tiny_model_dir):
    from ckl.run.rundir import MARKER, check_run_dir, claim_run_dir

    run = tmp_path / "run"
    claim_run_dir(run, "a" * 64)  # what a run killed right after claiming its directory leaves
    assert [p.name for p in run.iterdir()] == [MARKER]
    check_run_dir(run, "a" * 64)  # the same experiment continues
    with pytest.raises(InputError, match="different experiment"):
        check_run_dir(run, "b" * 64)
    (run / MARKER).write_text("{ not json")
    with pytest.raises(InputError, match="damaged or not a ckl run marker"):
        check_run_dir(run, "a" * 64)
    empty = tmp_path / "empty"
    empty.mkdir()
    config = ExperimentConfig.from_dict(_config(stream_dir, tiny_model_dir))
    run_experiment(config, empty, say=lambda m: None)  # an empty directory is fine
    assert (empty / MARKER).is_file() and (empty / "results.sqlite").is_file()


def test_config_name_dot_dot_etc_stays_one_directory_inside_runs(tmp_path, stream_dir, tiny_model_dir):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    exp = work / "exp.yaml"
    exp.write_text(yaml.safe_dump(_config(stream_dir, tiny_model_dir, name="../../etc")))
    result = _ckl(["run", exp], work)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "etc").exists() and not (work.parent / "etc").exists()
    [run] = (work / "runs").iterdir()
    assert (run / "results.sqlite").is_file() and "/" not in run.name and run.name not in (".", "..")


@pytest.mark.parametrize("name", ["../../etc", "..", ".", "", "a/b", "a\\b", "/abs", "x\x00y", ".hidden"])
def test_a_config_name_becomes_exactly_one_path_component(tmp_path, name):
    from ckl.run.rundir import path_component

    component = path_component(name)
    assert component and component not in (".", "..") and not component.startswith(".")
    assert "/" not in component and "\\" not in component and "\x00" not in component
    assert (tmp_path / "runs" / component).parent == tmp_path / "runs"
    assert path_component("experiment") == "experiment" and path_component("my run 2") == "my run 2"  # plain names unchanged
