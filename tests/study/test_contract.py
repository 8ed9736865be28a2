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


def test_a_study_directory_refuses_other_options_and_other_studies(tmp_path, tiny_stream, tiny_model_dir):
    import yaml

    from ckl.core.errors import InputError
    from ckl.study.base import load_study_config, run_study

    tiny_stream.save(tmp_path / "stream")
    cfg = lambda options: {"stream": str(tmp_path / "stream"), "model": str(tiny_model_dir), "seeds": [0], "eval": {"kinds": ["statement"]}, "study": options}
    first = tmp_path / "a.yaml"
    first.write_text(yaml.safe_dump(cfg({"batches": 1, "per_batch": 1, "rome": {"layer": 0, "steps": 5}, "memit": {"layers": [0], "steps": 5}})))
    cls = load_studies()["editing-collapse"]
    experiment, study = load_study_config(cls, first)
    run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    other = tmp_path / "b.yaml"
    other.write_text(yaml.safe_dump(cfg({"batches": 2, "per_batch": 1, "rome": {"layer": 0, "steps": 5}, "memit": {"layers": [0], "steps": 5}})))
    experiment, study = load_study_config(cls, other)
    with pytest.raises(InputError, match="study editing-collapse with other options or inputs"):
        run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    experiment, study = load_study_config(load_studies()["ckl-fuar"], None)
    with pytest.raises(InputError, match="choose another --out"):
        run_study(study, experiment, tmp_path / "out", say=lambda m: None)


def test_the_users_eval_keys_join_the_studys_and_bad_method_options_are_refused_at_load(tmp_path):
    from ckl.core.errors import InputError
    from ckl.study.base import load_study_config

    path = tmp_path / "s.yaml"
    path.write_text("eval: {batch_size: 64}\n")
    experiment, _ = load_study_config(load_studies()["relearning"], path)
    assert experiment.eval.batch_size == 64 and experiment.eval.attack is not None and experiment.eval.attack.curve == 10
    path.write_text("study:\n  method: foo\n")
    with pytest.raises(InputError) as err:
        load_study_config(load_studies()["unlearning-sequential-vs-batch"], path)
    assert err.value.line == 2 and err.value.field == "study.method" and "not an unlearning part" in err.value.message


@pytest.mark.parametrize("name", STUDIES)
def test_the_shipped_study_setting_loads_for_every_study(name):
    from pathlib import Path

    from ckl.study.base import load_study_config

    path = Path(__file__).resolve().parents[2] / "examples" / "studies" / "default.yaml"
    experiment, study = load_study_config(load_studies()[name], path)
    assert experiment.seeds == [0, 1, 2] and experiment.stream.endswith("runs/default/world") and experiment.model.endswith("runs/default/model")
    assert study.name == name
