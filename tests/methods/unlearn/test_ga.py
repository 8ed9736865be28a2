"""Gradient ascent lowers the forget set's likelihood and the loop stops as soon as the
configured threshold is crossed; a stage with only forget requests trains."""

import math
import random

from ckl.methods.base import build_method
from ckl.data.stream import render_documents


def test_ga_lowers_forget_likelihood_and_stops_at_the_logprob_threshold(unlearn, forget_only):
    threshold, epochs = -3.0, 50
    _, _, stats, method, losses = unlearn("ga", {"train": {"epochs": epochs, "lr": 1e-3}, "ga": {"stop_accuracy": None, "stop_logprob": threshold}}, forget_only)
    history = method.parts[0].history
    before, after = history[0]["logprob"], history[-1]["logprob"]
    assert before > threshold  # the facts were known: the rule did not hold at the start
    assert after <= threshold < history[-2]["logprob"]  # stopped at the first check past the threshold
    assert 0 < stats.steps == history[-1]["step"] < epochs  # (one forget batch per epoch: the budget is `epochs` steps)
    assert len(losses) == stats.steps and all(math.isfinite(v) for v in losses)


def test_ga_stops_when_forget_accuracy_reaches_the_floor(unlearn, forget_only, exact_match):
    model, tokenizer, stats, method, _ = unlearn("ga", {"train": {"epochs": 50, "lr": 1e-3}}, forget_only)  # default: stop_accuracy 0
    history = method.parts[0].history
    assert history[0]["accuracy"] > 0.5 and history[-1]["accuracy"] == 0.0
    assert all(h["accuracy"] > 0 for h in history[:-1])
    assert stats.steps < 50
    assert exact_match(model, tokenizer, list(forget_only.forget)) == 0.0


def test_without_a_stopping_rule_ga_spends_its_whole_budget(unlearn, forget_only, tiny_stream):
    documents = len(render_documents(forget_only.forget, tiny_stream.relations, random.Random(0), questions=None))
    _, _, stats, method, _ = unlearn("ga", {"train": {"epochs": 7, "lr": 1e-3}, "ga": {"stop_accuracy": None, "batch_size": 2}}, forget_only)
    assert stats.steps == 7 * math.ceil(documents / 2)  # epochs x forget batches per pass
    assert method.parts[0].history == []


def test_a_method_without_an_unlearning_part_does_not_train_on_forget_requests(unlearn, forget_only):
    _, _, stats, _, _ = unlearn("naive", {"train": {"epochs": 3}}, forget_only)
    assert stats.steps == 0 and stats.not_applied == {"forget": len(forget_only.forget)}
    assert "forget" in build_method("ga").kinds and "forget" not in build_method("naive").kinds


def test_under_data_parallelism_every_rank_stops_on_the_same_measurement(tiny_stream, tiny_model, forget_only):
    # the stopping rule is decided on the ranks' mean measurement: a rank whose own score
    # says "not forgotten yet" still stops when the mean says so (no rank left stepping alone)
    import torch

    from ckl.methods.base import StageContext

    class OtherRankForgot:
        num_processes, device = 2, torch.device("cpu")

        def reduce(self, tensor, reduction="mean"):
            assert reduction == "mean"
            return (tensor + torch.tensor([0.0, -50.0], dtype=tensor.dtype)) / 2  # the other rank: accuracy 0, logprob -50

        def unwrap_model(self, model):
            return model

    model, tokenizer = tiny_model
    part = build_method("ga", {"ga": {"stop_accuracy": None, "stop_logprob": -10.0}}).parts[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, OtherRankForgot(), change=forget_only)
    part.prepare(model, ctx)
    part.steps(0, 10)  # the stage's schedule, as the loop asks for it
    assert part.should_stop(model, 0)
    own = part.history[-1]
    assert own["logprob"] < -10.0 and own["accuracy"] < 0.6  # the mean was recorded: this rank alone was above -10
