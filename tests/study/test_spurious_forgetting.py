"""spurious-forgetting: after a stage, re-aligning a copy of the model on some untouched
people's facts is scored on the other people's facts, never shown; freeze is compared."""

import dataclasses

import yaml

from ckl.data.stream import Change
from ckl.results.store import Store
from ckl.study.base import MEASURED, load_study_config, run_study
from ckl.study.spurious_forgetting import SpuriousForgetting


def test_re_alignment_on_other_facts_is_measured_on_never_shown_ones(tmp_path, tiny_stream, tiny_model_dir):
    learn = tiny_stream.stages[0].learn
    known = {f.subject for f in (*tiny_stream.base, *learn)}
    stream = dataclasses.replace(tiny_stream, stages=(Change(1, learn=learn),), qa_subjects=frozenset(s for s in tiny_stream.qa_subjects if s in known))
    stream.save(tmp_path / "stream")
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(tmp_path / "stream"), "model": str(tiny_model_dir), "seeds": [0], "eval": {"kinds": ["statement"]},
                                      "study": {"epochs": 40, "lr": 1e-2, "layers": 1, "align_facts": 18, "align_epochs": 15, "align_lr": 3e-3}}))
    experiment, study = load_study_config(SpuriousForgetting, config)
    shown, probes = study._split(stream)
    assert len(shown) == 18 and probes
    subject_of = {f.id: f.subject for f in stream.base}
    assert not {f.subject for f in shown} & {subject_of[p.fact_id] for p in probes}, "probed people are never shown"
    result = run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    with Store(tmp_path / "out" / "results.sqlite") as store:
        measured = store.get_meta(MEASURED)
    assert set(measured) == {"naive/0", "freeze/0"}
    full = result["numbers"]["naive"]
    assert full["probes_before"] > full["probes_after"], "the stage made the model forget some of the never-shown facts"
    curve = measured["naive/0"]["curve"]
    assert curve[0]["step"] == 0 and curve[0]["accuracy"] == full["probes_after"] and len(curve) >= 5
    assert result["verdict"] in ("holds", "does not hold", "undecided") and "re-alignment" in result["line"]
    # resuming the study measures nothing again
    again = run_study(study, experiment, tmp_path / "out", say=lambda m: (_ for _ in ()).throw(AssertionError(m)) if "re-aligned" in m else None)
    assert again["numbers"] == result["numbers"]
