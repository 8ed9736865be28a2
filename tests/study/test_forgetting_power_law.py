"""forgetting-power-law on the tiny world: the study runs its experiment, fits, stores the
result where `ckl show` and the report read it, and refuses a stream without what it needs."""

import pytest
import yaml

from ckl.core.errors import InputError
from ckl.results.store import Store
from ckl.study.base import load_study_config, run_study
from ckl.study.forgetting_power_law import ForgettingPowerLaw

OPTIONS = {"ranks": [1, 8], "epochs": 30, "lr": 3e-3, "lora_lr": 1e-2, "points": 10, "sample": 20}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path_factory.mktemp("stream")
    tiny_stream.save(stream_dir)
    config = tmp_path_factory.mktemp("cfg") / "study.yaml"
    config.write_text(yaml.safe_dump({"stream": str(stream_dir), "model": str(tiny_model_dir), "seeds": [0],
                                      "eval": {"kinds": ["statement"]}, "study": OPTIONS}))
    experiment, study = load_study_config(ForgettingPowerLaw, config)
    out = tmp_path_factory.mktemp("study")
    result = run_study(study, experiment, out, say=lambda m: None)
    return out, result


def test_the_study_measures_forgetting_over_steps_for_full_and_lora_and_fits_it(study_run):
    out, result = study_run
    methods = result["numbers"]["methods"]
    assert list(methods) == ["full", "lora-r1", "lora-r8"]
    full, r1, r8 = methods["full"], methods["lora-r1"], methods["lora-r8"]
    assert full["trainable_params"] > r8["trainable_params"] > r1["trainable_params"]
    assert full["final_rise"] > 0, "fine-tuning on stage 1 raises K0's answer loss"
    assert full["final_rise"] > r1["final_rise"], "full fine-tuning forgets more than rank 1"
    for entry in methods.values():
        (f,) = entry["fits"]
        assert f["failed"] is None and f["points"] >= 10 and f["r2"] is not None
    assert result["verdict"] in ("holds", "does not hold") and "alpha over steps" in result["line"]
    assert [p["title"] for p in result["panels"]][0].startswith("K0 answer-loss rise")
    with Store(out / "results.sqlite") as store:
        assert store.get_meta("study")["verdict"] == result["verdict"]


def test_show_prints_the_verdict_and_the_report_draws_the_study(study_run):
    from typer.testing import CliRunner

    from ckl.app.cli import app
    from ckl.report.data import gather
    from ckl.report.html import report_page

    out, result = study_run
    shown = CliRunner().invoke(app, ["show", str(out)])
    assert shown.exit_code == 0 and f"study forgetting-power-law: {result['verdict']}" in " ".join(shown.output.split())
    page = report_page(gather([out]))
    assert "Study: forgetting-power-law" in page and "Kalajdzievski 2024" in page


def test_a_stream_that_teaches_nothing_is_refused_before_anything_is_written(tmp_path):
    world = {"people": 12, "stages": 1, "learn_per_stage": 0, "update_per_stage": 0, "forget_per_stage": 2, "general_train": 40,
             "general_heldout": 20, "background_people": 6, "min_probe_word_count": 0, "distinct_first_names": False}
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"world": world, "study": {"ranks": [1]}}))
    experiment, study = load_study_config(ForgettingPowerLaw, config)
    with pytest.raises(InputError, match="stage 1 teaches nothing"):
        run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,line,field,needle", [
    ("study:\n  ranks: [1, 1]\n", 2, "study.ranks", "must not repeat"),
    ("seeds: [0]\nstudy:\n  rank: [1]\n", 3, "study.rank", "did you mean 'ranks'"),
    ("methods:\n  - name: naive\n", 1, "methods", "a study makes its own methods"),
])
def test_bad_study_options_name_file_line_and_field(tmp_path, text, line, field, needle):
    config = tmp_path / "s.yaml"
    config.write_text(text)
    with pytest.raises(InputError) as err:
        load_study_config(ForgettingPowerLaw, config)
    assert (err.value.file, err.value.line, err.value.field) == (str(config), line, field)
    assert needle in err.value.message


def test_the_study_trains_stage_1_only_and_keeps_its_people_in_the_qa_half(tiny_stream):
    from ckl.study.forgetting_power_law import ForgettingPowerLawConfig

    cut = ForgettingPowerLaw(ForgettingPowerLawConfig()).derive(tiny_stream)
    assert [ch.stage for ch in cut.stages] == [1] and cut.base == tiny_stream.base
    stage1 = {f.subject for f in tiny_stream.stages[0].learn}
    assert {s for s in tiny_stream.qa_subjects if s in stage1} <= cut.qa_subjects
    dropped = {f.subject for f in tiny_stream.stages[1].learn}
    assert not dropped & cut.qa_subjects and {f.subject for f in cut.unseen} == dropped
