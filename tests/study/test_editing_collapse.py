"""editing-collapse: the collapse detector finds a planted collapse, the study derives its
edit stream from the configured one, and runs ROME and MEMIT over it in sequence."""

import pytest
import yaml

from ckl.core.errors import InputError
from ckl.study.base import load_study_config, run_study
from ckl.study.editing_collapse import EditingCollapse, collapse_point


def test_the_detector_finds_a_planted_collapse_and_only_a_real_one():
    untouched = [0.95, 0.93, 0.90, 0.88, 0.86, 0.30, 0.10]  # gradual, then a collapse at the 6th batch
    curve = [{"edits": 10 * (i + 1), "untouched_acc": a} for i, a in enumerate(untouched)]
    assert collapse_point(curve, 0.96, 0.5) == 60
    assert collapse_point(curve[:5], 0.96, 0.5) is None, "gradual forgetting alone is not a collapse"
    assert collapse_point(curve, 0.96, 0.95) == 30


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path_factory.mktemp("stream")
    tiny_stream.save(stream_dir)
    config = tmp_path_factory.mktemp("cfg") / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(stream_dir), "model": str(tiny_model_dir), "seeds": [0], "eval": {"kinds": ["statement"]},
                                      "study": {"batches": 3, "per_batch": 1, "rome": {"layer": 0, "steps": 10}, "memit": {"layers": [0], "steps": 10},
                                                "repair": {"layers": [0], "steps": 10, "rounds": 1}}}))
    experiment, study = load_study_config(EditingCollapse, config)
    out = tmp_path_factory.mktemp("study")
    return out, run_study(study, experiment, out, say=lambda m: None), tiny_stream


def test_the_study_edits_untouched_people_in_sequence_and_reports_the_curve(study_run):
    from ckl.data.stream import Stream

    out, result, original = study_run
    derived = Stream.load(out / "stream")
    assert derived.base == original.base, "the same base knowledge: the base model serves it"
    edits = [r for ch in derived.stages for r in ch.edit]
    assert len(edits) == 3 and len({r.fact.subject for r in edits}) == 3
    touched = {r.fact.subject for r in original.records()}
    assert not touched & {r.fact.subject for r in edits}
    assert all(r.fact.object != r.old_object for r in edits)
    for method in ("rome", "memit", "repair"):  # repair: MEMIT with its closed loop, beside the verdict
        assert len(result["numbers"][method]["collapse_edits"]) == 1
        assert result["numbers"][method]["efficacy_after"][0] is not None
    assert result["verdict"] in ("holds", "does not hold", "undecided") and "ROME" in result["line"]
    assert len(result["panels"][0]["series"]) == 3 and "REPAIR" in result["line"]


def test_a_stream_too_small_for_the_edits_is_refused_before_anything_is_written(tmp_path, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path / "stream"
    tiny_stream.save(stream_dir)
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(stream_dir), "model": str(tiny_model_dir), "study": {"batches": 10, "per_batch": 10}}))
    experiment, study = load_study_config(EditingCollapse, config)
    with pytest.raises(InputError, match="100 edits of distinct people need 100 untouched people"):
        run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    assert not (tmp_path / "out").exists()
