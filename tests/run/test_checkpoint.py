"""Checkpoints: one directory per label, damage found when read, resume stays exact.

Regression tests for issue 18's severe findings 2 and 3: methods labelled `x y` and `x_y`
shared one checkpoint directory (the second never trained and stored the first's model),
and random bytes written into a checkpoint's weights were loaded and stored as `ok`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from ckl.run.config import ExperimentConfig
from ckl.run.experiment import _checkpoint_dir, run_experiment
from ckl.methods.base import TrainingMethod
from ckl.results.store import Store


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory, tiny_stream):
    d = tmp_path_factory.mktemp("stream")
    tiny_stream.save(d)
    return d


def _config(stream_dir, model_dir, methods):
    return ExperimentConfig.from_dict({
        "name": "t", "stream": str(stream_dir), "model": str(model_dir), "eval": {"kinds": ["statement", "question"]},
        "methods": [{"skip": ["forget"], **m} for m in methods],
    })


NAIVE = [{"name": "naive", "train": {"epochs": 2, "lr": 3e-3}}]


def _outcomes(run_dir):
    with Store(run_dir / "results.sqlite") as store:
        return {
            (m, s, row): [(o["probe_id"], o["em"], o["rank_ok"], round(o["logprob"], 4), o["predicted"]) for o in store.outcomes(m, s, row)]
            for m, s in store.runs() for row in store.completed_rows(m, s)
        }


def _forget_row(run_dir, method, row):
    """Delete one stored row, so that the next run must read the checkpoint to redo it."""
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        db.execute('DELETE FROM outcomes WHERE method = ? AND "row" = ?', (method, row))
        db.execute('DELETE FROM rows WHERE method = ? AND "row" = ?', (method, row))


@pytest.fixture(scope="module")
def naive_run(tmp_path_factory, stream_dir, tiny_model_dir):
    run = tmp_path_factory.mktemp("naive") / "run"
    run_experiment(_config(stream_dir, tiny_model_dir, NAIVE), run, say=lambda m: None)
    return run


def test_methods_labelled_x_y_and_x_underscore_y_each_train_their_own_model(tmp_path, stream_dir, tiny_model_dir, monkeypatch):
    real_apply = TrainingMethod.apply
    trained = []

    def record(self, model, change, ctx):
        trained.append(change.stage)
        return real_apply(self, model, change, ctx)

    monkeypatch.setattr(TrainingMethod, "apply", record)
    methods = [{"name": "naive", "label": "x y", "train": {"epochs": 2, "lr": 3e-3}},
               {"name": "naive", "label": "x_y", "train": {"epochs": 2, "lr": 1e-3}}]
    messages = []
    run_experiment(_config(stream_dir, tiny_model_dir, methods), tmp_path / "run", say=messages.append)
    assert trained == [1, 2, 1, 2]  # the second method trained rather than "resuming after stage 2"
    assert not any("resuming" in m for m in messages)
    with Store(tmp_path / "run" / "results.sqlite") as store:
        first, second = store.outcomes("x y", 0, 2), store.outcomes("x_y", 0, 2)
    assert [o["logprob"] for o in first] != [o["logprob"] for o in second]


def test_no_two_labels_share_a_checkpoint_directory(tmp_path):
    labels = ["x y", "x_y", "x-y", "x.y", "x/y", "x\\y", "x?y", "X_Y", "é", "e", "_", "", "..", ".", "a" * 300, "a" * 301]
    dirs = {_checkpoint_dir(tmp_path, label, 0) for label in labels}
    assert len(dirs) == len(labels)
    assert all(d.parent == tmp_path / "checkpoints" and len(d.name) < 200 for d in dirs)


def _overwrite_random_bytes(path):
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 4)
        handle.write(os.urandom(min(100_000, size // 2)))


def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


CORRUPTIONS = {
    "random bytes in the weights": lambda ckpt: _overwrite_random_bytes(ckpt / "model.safetensors"),
    "truncated weights": lambda ckpt: _truncate(ckpt / "model.safetensors"),
    "state not JSON": lambda ckpt: (ckpt / "ckl_state.json").write_text('{"stage": 2, "meth'),
    "state with a changed stage": lambda ckpt: (ckpt / "ckl_state.json").write_text(
        (ckpt / "ckl_state.json").read_text().replace('"stage": 2', '"stage": 1')),
    "tokenizer deleted": lambda ckpt: (ckpt / "tokenizer.json").unlink(),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_checkpoint_weights_are_discarded_and_recomputed_not_stored_as_ok(tmp_path, naive_run, stream_dir, tiny_model_dir, corruption):
    run = tmp_path / "run"
    shutil.copytree(naive_run, run)
    ckpt = _checkpoint_dir(run, "naive", 0)
    CORRUPTIONS[corruption](ckpt)
    _forget_row(run, "naive", 2)
    messages = []
    run_experiment(_config(stream_dir, tiny_model_dir, NAIVE), run, say=messages.append)
    assert any("checkpoint" in m and "discarded" in m and "recomputing" in m for m in messages), messages
    assert _outcomes(run) == _outcomes(naive_run)  # exactly the uninterrupted run's results
    with Store(run / "results.sqlite") as store:
        assert store.stage_infos("naive", 0)[2]["perplexity"] is not None
    assert json.loads((ckpt / "ckl_state.json").read_text())["stage"] == 2  # a good checkpoint again


def test_a_checkpoint_without_checksums_that_cannot_be_read_is_recomputed(tmp_path, naive_run, stream_dir, tiny_model_dir):
    run = tmp_path / "run"
    shutil.copytree(naive_run, run)
    ckpt = _checkpoint_dir(run, "naive", 0)
    state = json.loads((ckpt / "ckl_state.json").read_text())
    (ckpt / "ckl_state.json").write_text(json.dumps({k: v for k, v in state.items() if k not in ("files", "sha256", "label")}))
    _truncate(ckpt / "model.safetensors")  # an earlier ckl's checkpoint, damaged
    _forget_row(run, "naive", 2)
    messages = []
    run_experiment(_config(stream_dir, tiny_model_dir, NAIVE), run, say=messages.append)
    assert any("discarded" in m for m in messages), messages
    assert _outcomes(run) == _outcomes(naive_run)


def test_a_run_made_before_marked_directories_and_hashed_checkpoint_names_still_resumes(tmp_path, naive_run, stream_dir, tiny_model_dir):
    from ckl.run.rundir import MARKER

    run = tmp_path / "run"
    shutil.copytree(naive_run, run)
    (run / MARKER).unlink()
    ckpt = _checkpoint_dir(run, "naive", 0)
    state = json.loads((ckpt / "ckl_state.json").read_text())
    (ckpt / "ckl_state.json").write_text(json.dumps({k: v for k, v in state.items() if k not in ("files", "sha256", "label")}))
    ckpt.rename(run / "checkpoints" / "naive-seed0")  # the name earlier ckl versions gave it
    _forget_row(run, "naive", 2)
    messages = []
    run_experiment(_config(stream_dir, tiny_model_dir, NAIVE), run, say=messages.append)
    assert any("resuming after stage 2" in m for m in messages), messages  # read the old checkpoint, not recomputed
    assert _outcomes(run) == _outcomes(naive_run)
    assert (run / MARKER).is_file() and (ckpt / "ckl_state.json").is_file()


def test_any_changed_byte_in_any_checkpoint_file_is_found(tmp_path, naive_run):
    import random

    from ckl.run.checkpoint import CheckpointError, verify

    ckpt = tmp_path / "ckpt"
    shutil.copytree(_checkpoint_dir(naive_run, "naive", 0), ckpt)
    verify(ckpt, "naive", 2)  # intact
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    rng = random.Random(18)
    for _ in range(20):
        path = rng.choice(files)
        data = path.read_bytes()
        at = rng.randrange(len(data))
        path.write_bytes(data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:])
        with pytest.raises(CheckpointError):
            verify(ckpt, "naive", 2)
        path.write_bytes(data)
    verify(ckpt, "naive", 2)


def test_state_bytes_counts_tensors_by_storage_and_the_rest_by_its_json():
    import json

    import torch

    from ckl.run.checkpoint import state_bytes

    assert state_bytes({}) == state_bytes({"lora": {}}) == 0  # parts that keep nothing
    assert state_bytes({"ewc": {"fisher.w": torch.zeros(10, 4)}}) == 160 + len(json.dumps("ewc")) + len(json.dumps("fisher.w"))
    facts = [["p1-city", "New fact: A was born in B.", "B", "keys"]] * 3
    assert state_bytes({"rag": {"facts": facts}}) == len(json.dumps({"rag": {"facts": facts}}))
