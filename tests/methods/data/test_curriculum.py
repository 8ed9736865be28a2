"""Curriculum: the stage-start model's confidence ranks the stage's facts, the first
epochs train only the easiest (or, reversed, the hardest), every fact is in from the
ramp on, and the loop sees the paced text."""

import dataclasses

import pytest

from ckl.data.stream import Change
from ckl.methods.base import StageContext, build_method
from ckl.methods.data.curriculum import pace
from ckl.model import lm


def test_pace_grows_from_start_to_all_at_the_ramp():
    assert [round(pace(e, 10, 0.3, 0.5), 2) for e in range(7)] == [0.3, 0.44, 0.58, 0.72, 0.86, 1.0, 1.0]
    assert pace(0, 1, 0.3, 0.5) == 0.3 and pace(1, 1, 0.3, 0.5) == 1.0


@pytest.fixture
def mixed(tiny_stream):
    """A stage teaching 4 facts the base model states (copies of known base facts) and 4 it has never seen."""
    known = [dataclasses.replace(f, id=f"again/{f.id}") for f in tiny_stream.invariant()[:4]]
    new = list(tiny_stream.stages[0].learn)[:4]
    return Change(1, learn=tuple(new + known)), {f.id for f in known}, {f.id for f in new}


def _context(stream, tokenizer, accelerator, change, epoch, epochs=10):
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)
    ctx.epoch, ctx.epochs = epoch, epochs
    return ctx


@pytest.mark.parametrize("order", ["easy_first", "hard_first"])
def test_the_first_epoch_trains_the_easiest_facts_and_the_ramp_brings_in_all(order, mixed, tiny_stream, tiny_model_dir, accelerator):
    change, known, new = mixed
    model, tokenizer = lm.load(tiny_model_dir)
    part = build_method("curriculum", {"curriculum": {"start": 0.5, "ramp": 0.5, "order": order}}).parts[0]
    part.prepare(model, _context(tiny_stream, tokenizer, accelerator, change, 0))
    facts = list(change.learn)
    first = {f.id for f in part.select_facts(facts, _context(tiny_stream, tokenizer, accelerator, change, 0))}
    assert first == (known if order == "easy_first" else new)  # the model states the known ones: they rank easiest
    assert {f.id for f in part.select_facts(facts, _context(tiny_stream, tokenizer, accelerator, change, 5))} == known | new


def test_the_loop_trains_on_the_paced_text(mixed, tiny_stream, tiny_model_dir, accelerator):
    change, _, _ = mixed
    tokens = {}
    for name in ("naive", "curriculum"):
        model, tokenizer = lm.load(tiny_model_dir)
        method = build_method(name, {"train": {"epochs": 4, "lr": 1e-3}})
        _, stats = method.apply(model, change, _context(tiny_stream, tokenizer, accelerator, change, 0, 4))
        tokens[name] = stats.tokens_seen
    assert tokens["curriculum"] < 0.85 * tokens["naive"]  # epochs 0-1 train 30% and 65% of the facts


def test_a_cosine_schedule_is_refused():
    with pytest.raises(ValueError, match="cosine"):
        build_method("curriculum", {"train": {"schedule": "cosine"}})
    with pytest.raises(ValueError, match="order"):
        build_method("curriculum", {"curriculum": {"order": "random"}})
