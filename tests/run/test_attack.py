"""The relearning attack is real: it fine-tunes a copy of a gradient-ascent-unlearned tiny
model through the training loop and the forgotten facts come back; the unlearned model
itself is untouched. And it runs as part of an experiment, stored and shown."""

from __future__ import annotations

import pytest
import torch

from ckl.run.attack import AttackConfig, attack_split, relearning_attack
from ckl.model.scoring import score_probes
from ckl.data.stream import Change, Stream


def _forget_stream(tiny_stream, n: int) -> Stream:
    """The tiny world's base knowledge with one stage that asks to forget `n` base facts
    (one per person, so each forgotten person keeps other facts: the boundary)."""
    chosen, seen = [], set()
    for fact in tiny_stream.base:
        if fact.subject not in seen:
            chosen.append(fact)
            seen.add(fact.subject)
    return Stream(relations=tiny_stream.relations, base=tiny_stream.base, stages=(Change(1, forget=tuple(chosen[:n])),))


def _accuracy(model, tok, probes) -> float:
    return float(score_probes(model, tok, probes).em.mean())


@pytest.fixture(scope="module")
def unlearned(tiny_model_dir, tiny_stream, accelerator):
    """The tiny pretrained model after gradient ascent (the `ga` part) on 12 facts."""
    from ckl.model import lm
    from ckl.methods.base import StageContext, build_method

    model, tok = lm.load(tiny_model_dir)
    stream = _forget_stream(tiny_stream, 12)
    change = stream.stages[0]
    probes = [p for p in stream.probes(kinds=("statement",)) if p.change == "forget"]
    before = _accuracy(model, tok, probes)
    method = build_method("ga", {"train": {"epochs": 50, "lr": 1e-3}, "ga": {"mode": "batched"}})
    ctx = StageContext(relations=stream.relations, base=stream.base, stage=1, seed=0, tokenizer=tok, accelerator=accelerator, change=change)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, change, ctx)
    return model, tok, stream, probes, before


def test_gradient_ascent_forgot_the_facts(unlearned):
    model, tok, _, probes, before = unlearned
    assert before >= 0.75
    assert _accuracy(model, tok, probes) <= 0.1


def test_partial_relearning_brings_back_facts_the_attack_never_showed(unlearned, accelerator):
    model, tok, stream, _, _ = unlearned
    probes = stream.probes(kinds=("statement",))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    config = AttackConfig(data="partial", fraction=0.5, epochs=10, lr=1e-3, seed=0)
    result = relearning_attack(model, tok, stream, probes, config, accelerator)
    assert len(result.trained_on) == 6 and len(result.probe_ids) == 6
    assert not set(result.trained_on) & {pid.split("/")[1] for pid in result.probe_ids}  # probed facts never shown
    assert result.steps > 0
    assert result.accuracy_after > result.accuracy_before  # knowledge came back
    for key, value in model.state_dict().items():  # the unlearned model itself is untouched
        assert torch.equal(value, weights[key]), key


def test_the_attack_can_draw_its_relearning_curve_without_changing_its_outcome(unlearned, accelerator):
    model, tok, stream, _, _ = unlearned
    probes = stream.probes(kinds=("statement",))
    plain = relearning_attack(model, tok, stream, probes, AttackConfig(fraction=0.5, epochs=10, lr=1e-3, seed=0), accelerator)
    curved = relearning_attack(model, tok, stream, probes, AttackConfig(fraction=0.5, epochs=10, lr=1e-3, seed=0, curve=10), accelerator)
    assert curved.after == plain.after and curved.before == plain.before, "scoring during the attack changes nothing"
    steps = [p["step"] for p in curved.curve]
    assert steps[0] == 0 and steps[-1] == curved.steps and steps == sorted(set(steps)) and len(steps) >= 5
    assert curved.curve[0]["accuracy"] == curved.accuracy_before and curved.curve[-1]["accuracy"] == curved.accuracy_after
    assert plain.curve == []


def test_unrelated_relearning_restores_accuracy_too(unlearned, accelerator):
    model, tok, stream, _, _ = unlearned
    config = AttackConfig(data="unrelated", facts=24, epochs=10, lr=1e-3, seed=0)
    result = relearning_attack(model, tok, stream, stream.probes(kinds=("statement",)), config, accelerator)
    forgotten = {f.id for f in stream.stages[0].forget}
    assert not set(result.trained_on) & forgotten and len(result.probe_ids) == 12
    assert result.accuracy_after > result.accuracy_before


def test_attack_split_is_seeded_and_validated(tiny_stream):
    stream = _forget_stream(tiny_stream, 10)
    forgotten, kept = list(stream.stages[0].forget), stream.invariant()
    a = attack_split(forgotten, kept, AttackConfig(fraction=0.3, seed=4))
    b = attack_split(forgotten, kept, AttackConfig(fraction=0.3, seed=4))
    assert a == b and len(a[0]) == 3 and len(a[1]) == 7
    with pytest.raises(ValueError, match="data must be one of"):
        AttackConfig(data="everything")
    with pytest.raises(ValueError, match="fraction"):
        AttackConfig(fraction=1.0)


def test_experiment_runs_the_attack_and_text_metrics_and_show_prints_them(tmp_path, tiny_stream, tiny_model_dir):
    """`eval.attack` and `eval.unlearning` in a config: the attack result and the
    per-row text metrics are stored, and `ckl show` prints the unlearning table."""
    from typer.testing import CliRunner

    from ckl.app.cli import app
    from ckl.run.config import load_config
    from ckl.run.experiment import run_experiment
    from ckl.results.store import Store
    from ckl.results.unlearning import summarize_unlearning

    _forget_stream(tiny_stream, 8).save(tmp_path / "stream")
    (tmp_path / "exp.yaml").write_text(
        f"name: t\nstream: stream\nmodel: {tiny_model_dir}\n"
        "methods:\n  - name: ga\n    train: {epochs: 30, lr: 1.0e-3}\n"
        "eval:\n  kinds: [statement]\n  unlearning: {ngram: 2}\n  attack: {data: partial, epochs: 5}\n"
    )
    config = load_config(tmp_path / "exp.yaml")
    run_experiment(config, tmp_path / "run", say=lambda m: None)
    with Store(tmp_path / "run" / "results.sqlite") as store:
        attack = store.attacks("ga", 0)[1]
        notes = store.stage_infos("ga", 0)[1]["notes"]["unlearning"]
        summary = summarize_unlearning(store)["ga"]
    assert attack["config"]["data"] == "partial" and len(attack["probe_ids"]) == 4
    assert set(notes) == {"invariant", "forget1"} and notes["forget1"]["n"] == 8
    assert summary["forget_before"] > summary["forget_after"]
    assert 0.0 <= summary["boundary_before"] <= 1.0
    # the summary reports the stored attack, and the recovered share is computed from it
    assert (summary["attack_before"], summary["attack_after"]) == (attack["accuracy_before"], attack["accuracy_after"])
    assert summary["attack_after"] >= summary["attack_before"]  # relearning never makes them less known (bringing them back: the tests above)
    assert summary["recovered"] == pytest.approx(
        (summary["attack_after"] - summary["attack_before"]) / (summary["attack_original"] - summary["attack_before"]))
    shown = CliRunner().invoke(app, ["show", str(tmp_path / "run")])
    assert shown.exit_code == 0 and "unlearning" in shown.output and "recovered" in shown.output
    run_experiment(config, tmp_path / "run", say=lambda m: None)  # resuming: nothing recomputed
    with Store(tmp_path / "run" / "results.sqlite") as store:
        assert store.attacks("ga", 0)[1] == attack


def test_bad_attack_options_are_config_errors(tmp_path):
    from ckl.run.config import load_config
    from ckl.core.errors import InputError

    (tmp_path / "exp.yaml").write_text("world: {people: 12, learn_per_stage: 4, update_per_stage: 4, forget_per_stage: 2}\nmethods: [{name: naive, skip: [forget]}]\neval:\n  attack: {data: all}\n")
    with pytest.raises(InputError) as info:
        load_config(tmp_path / "exp.yaml")
    assert info.value.line == 4 and "data must be one of" in info.value.message and info.value.more == []
