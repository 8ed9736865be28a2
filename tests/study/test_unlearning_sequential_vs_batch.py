"""unlearning-sequential-vs-batch: the same targets unlearned at once and in chunks, with
EL/MA and what is kept measured for both."""

import dataclasses

import pytest
import yaml

from ckl.core.errors import InputError
from ckl.study.base import load_study_config, run_study
from ckl.study.unlearning_sequential_vs_batch import SequentialVsBatch


def test_both_runs_forget_the_same_targets_and_the_numbers_are_reported(tmp_path, tiny_stream, tiny_model_dir):
    people = {f.subject for f in tiny_stream.base}
    untouched = dataclasses.replace(tiny_stream, stages=(), qa_subjects=frozenset(s for s in tiny_stream.qa_subjects if s in people),
                                    unseen=tuple(f for ch in tiny_stream.stages for f in ch.learn))
    untouched.save(tmp_path / "stream")
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"stream": str(tmp_path / "stream"), "model": str(tiny_model_dir), "seeds": [0],
                                      "study": {"forget": 6, "chunk_size": 2, "epochs": 30, "lr": 1e-3}}))
    experiment, study = load_study_config(SequentialVsBatch, config)
    result = run_study(study, experiment, tmp_path / "out", say=lambda m: None)
    batched, chunked = result["numbers"]["batched"], result["numbers"]["chunked"]
    for run in (batched, chunked):
        assert run["forget_before"] >= 0.75 and run["forget_after"] <= 0.2, "both forgot the targets"
        assert run["ma_after"] < run["ma_before"] and run["retention"] is not None and run["perplexity_after"] > 1
    assert result["verdict"] in ("holds", "does not hold") and "chunks of 2" in result["line"]


def test_chunks_as_large_as_the_forget_set_are_refused_with_the_field(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("study:\n  forget: 8\n  chunk_size: 8\n")
    with pytest.raises(InputError) as err:
        load_study_config(SequentialVsBatch, config)
    assert err.value.field == "study.chunk_size" and err.value.line == 3 and "more than one chunk" in err.value.message
