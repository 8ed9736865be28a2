"""The divergence guard: a NaN/inf loss or NaN weights stop the stage with a clear message,
the stage is stored as failed, the last good checkpoint stays, and other methods go on."""

from __future__ import annotations

import json
import re

import torch

from ckl.model import lm
from ckl.run.config import ExperimentConfig
from ckl.run.experiment import _checkpoint_dir, run_experiment
from ckl.methods.base import TrainingMethod
from ckl.results.store import Store


def _config(stream_dir, model_dir, methods) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "diverge",
        "stream": str(stream_dir),
        "model": str(model_dir),
        "methods": [{"skip": ["forget"], **m} for m in methods],
        "eval": {"kinds": ["statement"]},
    })


def test_an_exploding_learning_rate_fails_its_stage_and_the_other_method_goes_on(tmp_path, tiny_stream, tiny_model_dir):
    tiny_stream.save(tmp_path / "stream")
    methods = [
        {"name": "naive", "label": "exploding", "train": {"epochs": 2, "lr": 1.0e30}},  # AdamW steps ~lr: inf/NaN after one step
        {"name": "replay", "train": {"epochs": 2, "lr": 3.0e-3}},
    ]
    messages: list[str] = []
    run_experiment(_config(tmp_path / "stream", tiny_model_dir, methods), tmp_path / "run", say=messages.append)

    with Store(tmp_path / "run" / "results.sqlite") as store:
        infos = store.stage_infos("exploding", 0)
        assert [i["status"] for i in infos] == ["ok", "failed"]  # stage 2 never ran
        assert "loss became" in infos[1]["notes"]["error"]
        assert store.completed_rows("replay", 0) == [0, 1, 2]
    failed = [m for m in messages if "FAILED" in m]
    assert len(failed) == 1 and "exploding seed 0: stage 1 FAILED (loss became" in failed[0]
    assert failed[0].endswith("the base model is the last good state")


def test_nan_weights_after_a_stage_keep_the_previous_stage_checkpoint(tmp_path, tiny_stream, tiny_model_dir, monkeypatch):
    tiny_stream.save(tmp_path / "stream")
    real_apply = TrainingMethod.apply

    def poison_stage_two(self, model, change, ctx):
        model, stats = real_apply(self, model, change, ctx)
        if self.name == "naive" and change.stage == 2:
            with torch.no_grad():
                model.lm_head.weight[0, 0] = float("nan")  # what an overflow in an optimiser step leaves behind
        return model, stats

    monkeypatch.setattr(TrainingMethod, "apply", poison_stage_two)
    methods = [{"name": "naive", "train": {"epochs": 2, "lr": 3.0e-3}}, {"name": "replay", "train": {"epochs": 2, "lr": 3.0e-3}}]
    config = _config(tmp_path / "stream", tiny_model_dir, methods)
    messages: list[str] = []
    run_experiment(config, tmp_path / "run", say=messages.append)
    ckpt = _checkpoint_dir(tmp_path / "run", "naive", 0)
    failed = [m for m in messages if "FAILED" in m]
    assert len(failed) == 1 and re.search(r"stage 2 FAILED \(weights of \S+ are not finite\)", failed[0])
    assert failed[0].endswith(f"last good checkpoint kept in {ckpt}")

    with Store(tmp_path / "run" / "results.sqlite") as store:
        infos = store.stage_infos("naive", 0)
        assert [i["status"] for i in infos] == ["ok", "ok", "failed"]
        assert "not finite" in infos[2]["notes"]["error"]
        assert store.completed_rows("replay", 0) == [0, 1, 2]
    assert json.loads((ckpt / "ckl_state.json").read_text())["stage"] == 1  # the last good stage
    model, _ = lm.load(ckpt)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    messages.clear()
    run_experiment(config, tmp_path / "run", say=messages.append)  # the same command again
    assert any("failed earlier" in m and "not retried" in m for m in messages)
