"""Helpers for the unlearning tests: a forget-only stage on the tiny world and a way to
apply a method to it and score facts."""

from __future__ import annotations

import pytest
import torch

from ckl.data.stream import Change, make_probes


@pytest.fixture
def forget_facts(tiny_stream):
    """Every deletion request of the tiny world (two stages' worth): base facts the
    tiny model was pretrained on."""
    return [f for ch in tiny_stream.stages for f in ch.forget]


@pytest.fixture
def forget_only(forget_facts):
    """A stage that asks only to forget: no text to teach."""
    return Change(stage=1, forget=tuple(forget_facts))


@pytest.fixture
def retained(tiny_stream, forget_facts):
    """Base facts no stage touches: what must stay."""
    ids = {f.id for f in forget_facts}
    return [f for f in tiny_stream.invariant() if f.id not in ids]


@pytest.fixture
def exact_match(tiny_stream):
    """exact_match(model, tokenizer, facts, kinds) -> greedy exact-match accuracy."""
    from ckl.model.scoring import score_probes

    def score(model, tokenizer, facts, kinds=("statement", "question")) -> float:
        probes = make_probes(facts, tiny_stream.relations, "t", 0, "forget", kinds, 1)
        return float(score_probes(model, tokenizer, probes).em.mean())

    return score


@pytest.fixture
def unlearn(tiny_stream, tiny_model_dir, accelerator):
    """unlearn(expression, options, change) -> (model, tokenizer, stats, method, losses)."""
    from ckl.model import lm
    from ckl.methods.base import StageContext, build_method

    def run(expression, options, change, seed=0):
        model, tokenizer = lm.load(tiny_model_dir)
        method = build_method(expression, options)
        losses = []
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, change.stage, seed, tokenizer, accelerator,
                           change=change, progress=lambda epoch, step, loss: losses.append(loss))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, stats = method.apply(model, change, ctx)
        return model, tokenizer, stats, method, losses

    return run
