"""Parts that keep modules beside the model's weights (kadapter, loramoe) survive the
runner's checkpoints: a run interrupted after a checkpoint was written but before its row
was scored resumes to exactly the results of an uninterrupted run. `ckl update`, which
ships a bare Hugging Face directory, refuses them instead of writing a model without its
adapters."""

import pytest

import ckl.run.experiment
from ckl.run.config import ExperimentConfig
from ckl.run.experiment import run_experiment
from ckl.results.store import Store

METHODS = [
    {"name": "kadapter", "skip": ["forget"], "train": {"epochs": 2, "lr": 3e-3}, "kadapter": {"size": 16}},
    {"name": "loramoe", "skip": ["forget"], "train": {"epochs": 2, "lr": 3e-3}},
]


def _config(stream_dir, model_dir):
    return ExperimentConfig.from_dict({
        "name": "attached", "stream": str(stream_dir), "model": str(model_dir),
        "methods": METHODS, "eval": {"kinds": ["statement"]},
    })


def _outcomes(run_dir):
    with Store(run_dir / "results.sqlite") as store:
        return {
            (m, s, row): [(o["probe_id"], o["em"], o["rank_ok"], round(o["logprob"], 4)) for o in store.outcomes(m, s, row)]
            for m, s in store.runs() for row in store.completed_rows(m, s)
        }


def test_resumed_runs_score_the_model_with_its_adapters(tmp_path, tiny_stream, tiny_model_dir, monkeypatch):
    stream_dir = tmp_path / "stream"
    tiny_stream.save(stream_dir)
    run_experiment(_config(stream_dir, tiny_model_dir), tmp_path / "full", say=lambda m: None)

    real_record = ckl.run.experiment._record
    crashed = set()

    def crash_before_scoring_stage_one(store, label, seed, row, *args, **kwargs):
        if row == 1 and label not in crashed:
            crashed.add(label)
            raise KeyboardInterrupt  # the checkpoint of stage 1 is on disk, its row is not
        return real_record(store, label, seed, row, *args, **kwargs)

    monkeypatch.setattr(ckl.run.experiment, "_record", crash_before_scoring_stage_one)
    messages = []
    for _ in METHODS:  # each method is interrupted once
        with pytest.raises(KeyboardInterrupt):
            run_experiment(_config(stream_dir, tiny_model_dir), tmp_path / "resumed", say=messages.append)
    run_experiment(_config(stream_dir, tiny_model_dir), tmp_path / "resumed", say=messages.append)
    assert crashed == {"kadapter", "loramoe"}
    assert sum("resuming after stage 1" in m for m in messages) == 2
    assert _outcomes(tmp_path / "resumed") == _outcomes(tmp_path / "full")


@pytest.mark.parametrize("method", ["kadapter", "replay+loramoe"])
def test_ckl_update_refuses_a_method_whose_adapters_a_model_directory_cannot_hold(method, tiny_stream, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from ckl.app.cli import app
    from ckl.data.facts import fact_row, jsonl_text, relation_row

    (tmp_path / "relations.jsonl").write_text(jsonl_text(relation_row(r) for r in tiny_stream.relations.values()))
    (tmp_path / "learn.jsonl").write_text(jsonl_text(fact_row(f) for f in tiny_stream.stages[0].learn))
    (tmp_path / "facts.jsonl").write_text(jsonl_text(fact_row(f) for f in tiny_stream.base))
    result = CliRunner().invoke(app, [
        "update", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--method", method,
        "--relations", str(tmp_path / "relations.jsonl"), "--facts", str(tmp_path / "facts.jsonl"),
        "--learn", str(tmp_path / "learn.jsonl"),
    ], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "keeps what it learns outside the model's weights" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_the_relearning_attack_attacks_the_model_with_its_adapters(tmp_path, tiny_stream, tiny_model_dir, monkeypatch):
    # the attack reloads the final checkpoint: it must see the model the rows scored,
    # adapters included, not the bare saved weights
    import torch

    import ckl.run.unlearning
    from ckl.run.attack import AttackResult

    stream_dir = tmp_path / "stream"
    tiny_stream.save(stream_dir)
    config = ExperimentConfig.from_dict({
        "name": "attacked", "stream": str(stream_dir), "model": str(tiny_model_dir), "methods": METHODS[:1],
        "eval": {"kinds": ["statement"], "attack": {"data": "partial", "epochs": 1}},
    })
    seen = {}

    def fake_attack(model, tokenizer, stream, probes, attack, accelerator):
        ids = tokenizer("Alda", return_tensors="pt").input_ids
        with torch.no_grad():
            seen["logits"] = model(ids).logits
        return AttackResult(config={}, trained_on=[], probe_ids=["p"], before=[False], after=[False])

    monkeypatch.setattr(ckl.run.unlearning, "relearning_attack", fake_attack)
    run_experiment(config, tmp_path / "run", say=lambda m: None)

    from ckl.model import lm
    from ckl.run.experiment import _checkpoint_dir, load_checkpoint
    from ckl.methods.base import build_method

    ckpt = _checkpoint_dir(tmp_path / "run", "kadapter", 0)
    with_adapters, tok, _ = load_checkpoint(ckpt, build_method("kadapter", {"kadapter": {"size": 16}}))
    bare, _ = lm.load(ckpt)
    ids = tok("Alda", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(seen["logits"], with_adapters.eval()(ids).logits)
        assert not torch.allclose(seen["logits"], bare.eval()(ids).logits)
