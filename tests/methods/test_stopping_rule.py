"""`train.until`: a stage trains until its new and updated facts are known, within the
`epochs` budget, instead of for a fixed number of epochs tuned on one world."""

import pytest

from ckl.model import lm
from ckl.model.scoring import known_fraction
from ckl.methods.base import StageContext, build_method
from ckl.train.loop import TrainConfig


def _apply(options, stream, model_dir, accelerator, known=True):
    model, tokenizer = lm.load(model_dir)
    change = stream.stages[0]
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change,
                       known=known_fraction(tokenizer, stream.relations) if known else None)
    model, stats = build_method("naive", {"train": options}).apply(model, change, ctx)
    return model, tokenizer, stats, ctx


def test_until_stops_once_the_stage_is_known_and_not_before(tiny_stream, tiny_model_dir, accelerator):
    budget = {"epochs": 80, "lr": 3e-3}
    model, tokenizer, full, ctx = _apply(budget, tiny_stream, tiny_model_dir, accelerator)
    taught = tiny_stream.stages[0].taught()
    assert full.epochs == 80 and ctx.known(model, taught) >= 0.9
    model, _, early, ctx = _apply(budget | {"until": 0.9, "check_every": 2}, tiny_stream, tiny_model_dir, accelerator)
    assert early.epochs < 80 and early.epochs % 2 == 0, "stopped at a check, before the budget"
    assert ctx.known(model, taught) >= 0.9, "and the stage is known"
    # the check before the one that stopped had not reached the target: it stopped at the first
    if early.epochs > 2:
        model, _, _, ctx = _apply(budget | {"epochs": early.epochs - 2}, tiny_stream, tiny_model_dir, accelerator)
        assert ctx.known(model, taught) < 0.9


def test_until_is_validated_and_needs_a_scorer(tiny_stream, tiny_model_dir, accelerator):
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError, match="until"):
            TrainConfig(until=bad)
    with pytest.raises(ValueError, match="check_every"):
        TrainConfig(check_every=0)
    with pytest.raises(ValueError, match="StageContext.known"):
        _apply({"epochs": 2, "until": 0.5}, tiny_stream, tiny_model_dir, accelerator, known=False)
