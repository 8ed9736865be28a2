"""Editors in a full run: edits are applied stage by stage, and an interrupted run
resumes from the checkpoint to the same results (the weights carry the edits)."""

import pytest

from ckl.run.config import ExperimentConfig
from ckl.run.experiment import run_experiment
from ckl.methods.edit.rome import Rome
from ckl.results.store import Store
from ckl.data.world import WorldConfig, build_world
from tests.conftest import TINY_WORLD


@pytest.fixture(scope="module")
def edit_stream_dir(tmp_path_factory):
    # Same base knowledge as the tiny model's world (same seed and people), plus edits.
    stream = build_world(WorldConfig(**{**TINY_WORLD, "edit_per_stage": 2}))
    d = tmp_path_factory.mktemp("edit_stream")
    stream.save(d)
    return d


def _config(stream_dir, model_dir):
    return ExperimentConfig.from_dict({
        "name": "edit", "stream": str(stream_dir), "model": str(model_dir),
        "methods": [{"name": "rome", "rome": {"steps": 10, "covariance_samples": 40}, "skip": ["learn", "forget"]}],
        "eval": {"kinds": ["statement"]},
    })


def _outcomes(run_dir):
    with Store(run_dir / "results.sqlite") as store:
        return {row: [(o["probe_id"], o["em"], round(o["logprob"], 4)) for o in store.outcomes("rome", 0, row)] for row in store.completed_rows("rome", 0)}


def test_rome_run_resumes_to_the_same_results(tmp_path, edit_stream_dir, tiny_model_dir, monkeypatch):
    full = tmp_path / "full"
    run_experiment(_config(edit_stream_dir, tiny_model_dir), full, say=lambda m: None)
    expected = _outcomes(full)
    assert sorted(expected) == [0, 1, 2]
    edited = [o for o in expected[1] if o[0].startswith("stage1/") and "-" in o[0]]
    assert edited, "stage 1's edit probes are scored"

    real_apply = Rome.apply

    def crash_on_stage_two(self, model, change, ctx):
        if change.stage == 2:
            raise KeyboardInterrupt
        return real_apply(self, model, change, ctx)

    monkeypatch.setattr(Rome, "apply", crash_on_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_config(edit_stream_dir, tiny_model_dir), tmp_path / "cut", say=lambda m: None)
    monkeypatch.setattr(Rome, "apply", real_apply)
    messages = []
    run_experiment(_config(edit_stream_dir, tiny_model_dir), tmp_path / "cut", say=messages.append)
    assert any("resuming after stage 1" in m for m in messages)
    assert _outcomes(tmp_path / "cut") == expected

