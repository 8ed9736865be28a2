"""acquisition-dynamics: new facts injected once, duplicated or paraphrased into the base
model's continued pretraining, followed per probe kind over the steps."""

import yaml

from ckl.study.acquisition_dynamics import AcquisitionDynamics, AcquisitionDynamicsConfig, _decay
from ckl.study.base import MEASURED, load_study_config, run_study


def test_exposure_schedules():
    study = AcquisitionDynamics(AcquisitionDynamicsConfig(times=4, gap=3, epochs=20))
    assert study.exposures("once") == [0]
    assert study.exposures("duplicated") == study.exposures("paraphrased") == [0, 3, 6, 9]


def test_the_decay_after_the_last_exposure_is_the_retained_share_of_the_gain():
    curve = [{"step": s, "statement": {"logprob": lp}} for s, lp in [(0, -8.0), (5, -4.0), (10, -2.0), (20, -3.0), (40, -4.0), (80, -5.0)]]
    steps, retained = _decay({"curve": curve, "last_exposure_step": 10})
    assert steps == [10, 30, 70] and retained == [5 / 6, 4 / 6, 3 / 6]


def test_the_study_injects_and_follows_the_facts_on_a_tiny_stream(tmp_path, tiny_stream, tiny_model_dir):
    tiny_stream.save(tmp_path / "stream")
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(tmp_path / "stream"), "model": str(tiny_model_dir), "seeds": [0],
                                      "study": {"people": 3, "times": 3, "gap": 2, "epochs": 16, "lr": 3e-3}}))
    experiment, study = load_study_config(AcquisitionDynamics, config)
    result = run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    from ckl.results.store import Store

    with Store(tmp_path / "out" / "results.sqlite") as store:
        measured = store.get_meta(MEASURED)
        assert store.runs() == [], "no method ran: the study trained on its own"
    assert set(measured) == {"once/0", "duplicated/0", "paraphrased/0"}
    for mode in ("once", "duplicated", "paraphrased"):
        curve = measured[f"{mode}/0"]["curve"]
        assert curve[0]["step"] == 0 and len(curve) >= 5
        assert result["numbers"][mode]["statement_gain_end"] > 0, "the injected facts were learned"
    # the three modes share the first exposure and the corpus: identical until the second exposure
    once, dup = measured["once/0"]["curve"], measured["duplicated/0"]["curve"]
    second = measured["duplicated/0"]["exposure_steps"][1]
    early = [p["step"] for p in once if p["step"] <= second]
    assert early and all(a == b for a, b in zip([p for p in once if p["step"] in early], [p for p in dup if p["step"] in early]))
    assert result["numbers"]["duplicated"]["statement_gain_end"] > result["numbers"]["once"]["statement_gain_end"], "more exposures, more gain"
    assert result["verdict"] in ("holds", "does not hold", "undecided") and "paraphrased" in result["line"]
    from typer.testing import CliRunner

    from ckl.app.cli import app

    shown = CliRunner().invoke(app, ["show", str(tmp_path / "out")])
    assert shown.exit_code == 0 and "study acquisition-dynamics:" in " ".join(shown.output.split())
