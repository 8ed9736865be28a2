"""Every registered study honours the study contract: options with help that round-trip,
methods that make a valid experiment, a name, a paper and a question."""

import dataclasses
import json

import pytest

from ckl.run.config import ExperimentConfig
from ckl.study.base import load_studies

STUDIES = sorted(load_studies())


def test_studies_are_registered():
    assert "forgetting-power-law" in STUDIES


@pytest.mark.parametrize("name", STUDIES)
def test_a_study_has_documented_options_and_makes_a_valid_experiment(name):
    cls = load_studies()[name]
    assert cls.name == name and cls.paper and cls.question.endswith("?")
    config = cls.Config()
    assert cls.Config(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    for f in dataclasses.fields(cls.Config):
        assert f.metadata.get("help"), f"{name}: study.{f.name} has no help"
    study = cls(config)
    experiment = ExperimentConfig.from_dict({"world": {"people": 30}, "pretrain": {}, "methods": study.methods(), **study.experiment()})
    assert [m.display for m in experiment.methods] == [m.get("label") or m["name"] for m in study.methods()]


def test_the_command_lists_studies_and_refuses_an_unknown_one_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app

    listed = CliRunner().invoke(app, ["study", "--list"])
    assert listed.exit_code == 0 and all(name in listed.output for name in STUDIES)
    wrong = CliRunner().invoke(app, ["study", "forgetting-powerlaw", "--out", str(tmp_path / "o")])
    assert wrong.exit_code == 2 and "did you mean 'forgetting-power-law'" in " ".join(wrong.output.split())
    assert "Traceback" not in wrong.output and not (tmp_path / "o").exists()
