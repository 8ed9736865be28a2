"""Prompt decoupling: beside an unlearning objective, training the forgotten people's
other facts keeps more of them (the forgetting boundary) at the same forgetting; the
decoupled set is exactly those facts, and the refusal measure reads answers as SafeEraser's
refusal rate does."""

import pytest

from ckl.evaluate import unlearning as U
from ckl.methods.base import build_method

TRAIN = {"epochs": 20, "lr": 1e-3}


def test_the_boundary_is_kept_better_at_the_same_forgetting(unlearn, forget_only, forget_facts, tiny_stream, exact_match):
    subjects = {f.subject for f in forget_facts}
    gone = {f.id for f in forget_facts}
    boundary = [f for f in tiny_stream.base if f.subject in subjects and f.id not in gone]
    assert boundary
    kept = {}
    for expression in ("ga", "ga+prompt_decouple"):
        model, tokenizer, _, method, _ = unlearn(expression, {"train": TRAIN}, forget_only)
        assert exact_match(model, tokenizer, forget_facts) == 0.0  # forgotten either way
        kept[expression] = exact_match(model, tokenizer, boundary)
        if expression != "ga":
            assert {f.id for f in method.parts[1].boundary} == {f.id for f in boundary}
    # measured 0.825 against 0.625 at one thread, but 0.775 against 0.725 at two threads with
    # the packages of 2026-11-30: the gap's size depends on the thread count, its sign has not
    assert kept["ga+prompt_decouple"] > kept["ga"], kept


def test_refusals_are_answers_that_begin_like_a_refusal():
    refusals = [U.words("I don't know"), U.words("That is beyond my knowledge")]
    assert U.is_refusal(U.words("I don't"), refusals) and U.is_refusal(U.words("That is beyond my knowledge, sorry"), refusals)
    assert not U.is_refusal(U.words("Port Elmira"), refusals) and not U.is_refusal([], refusals)
    assert U.refusal_share([U.words("I"), U.words("Ostwick")], refusals) == 0.5 and U.refusal_share([], refusals) is None


def test_options_are_checked():
    with pytest.raises(ValueError, match="weight"):
        build_method("ga+prompt_decouple", {"prompt_decouple": {"weight": -1}})
