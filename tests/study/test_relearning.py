"""relearning: unlearning, then an attack on half of the forgotten facts, with the recovered
fraction of the other half drawn over the attack's steps."""

import dataclasses

import pytest
import yaml

from ckl.core.errors import InputError
from ckl.study.base import load_study_config, run_study
from ckl.study.relearning import Relearning


def _untouched(stream):
    people = {f.subject for f in stream.base}
    return dataclasses.replace(stream, stages=(), qa_subjects=frozenset(s for s in stream.qa_subjects if s in people))


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path_factory.mktemp("stream")
    _untouched(tiny_stream).save(stream_dir)
    config = tmp_path_factory.mktemp("cfg") / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(stream_dir), "model": str(tiny_model_dir), "seeds": [0],
                                      "study": {"methods": ["ga"], "forget": 8, "epochs": 50, "lr": 1e-3, "attack_epochs": 20, "attack_lr": 3e-3}}))
    experiment, study = load_study_config(Relearning, config)
    out = tmp_path_factory.mktemp("study")
    return out, run_study(study, experiment, out, say=lambda m: None)


def test_the_attack_brings_back_facts_it_never_showed_and_the_curve_says_when(study_run):
    from ckl.data.stream import Stream

    out, result = study_run
    forgotten = Stream.load(out / "stream").stages[0].forget
    assert len(forgotten) == 8 and len({f.subject for f in forgotten}) == 8
    ga = result["numbers"]["ga"]
    assert ga["original"] >= 0.75 and ga["unlearned"] <= 0.25, "gradient ascent forgot the facts"
    (series,) = result["panels"][0]["series"]
    assert series["x"][0] == 0 and series["y"][0] == 0.0 and series["y"][-1] == pytest.approx(ga["recovered"])
    assert ga["peak"] == max(series["y"]) > 0, "the attack on the other half brought some back along the way"
    assert ga["peak_steps"] == [series["x"][series["y"].index(max(series["y"]))]]
    assert result["verdict"] in ("holds", "does not hold") and "recovered" in result["line"]


def test_a_stream_without_enough_untouched_people_is_refused(tmp_path, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path / "stream"
    tiny_stream.save(stream_dir)
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(stream_dir), "model": str(tiny_model_dir), "study": {"forget": 40}}))
    experiment, study = load_study_config(Relearning, config)
    with pytest.raises(InputError, match="needs 40 untouched people"):
        run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    assert not (tmp_path / "out").exists()
