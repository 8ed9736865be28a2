import random
from collections import Counter

import pytest

from ckl.data.facts import ChangeRecord, Fact
from ckl.methods.base import StageContext, build_method
from ckl.methods.data.replay import Replay, ReplayConfig, ReservoirBuffer
from ckl.data.stream import Change


def _facts(n, prefix="f"):
    return [Fact(f"{prefix}{i}", f"Person {i}", "employer", f"Company {i % 5}") for i in range(n)]


def _ctx(base, change=None, stage=1):
    return StageContext(relations={}, base=base, stage=stage, seed=0, tokenizer=None, accelerator=None, change=change)


def test_reservoir_keeps_every_fact_equally_likely():
    counts = Counter()
    for trial in range(2000):
        buffer = ReservoirBuffer(capacity=5)
        rng = random.Random(trial)
        for f in _facts(20):
            buffer.add(f, rng)
        assert len(buffer.facts) == 5
        counts.update(f.id for f in buffer.facts)
    # each of 20 facts is held with probability 5/20 -> ~500 of 2000 trials
    assert all(400 < counts[f"f{i}"] < 600 for i in range(20)), counts


def test_buffer_keeps_the_truth_when_facts_are_updated_or_forgotten():
    base = _facts(10)
    part = Replay(ReplayConfig(buffer_size=100))
    updated = Fact("f3", "Person 3", "employer", "New Corp", 1)
    change = Change(stage=1, update=(ChangeRecord(1, "update", updated, "Company 3"),), forget=(base[4],), learn=(Fact("n1", "New Person", "employer", "Company 1", 1),))
    part.observe(None, change, _ctx(base, change))
    held = {f.id: f for f in part.buffer.facts}
    assert held["f3"].object == "New Corp"
    assert "f4" not in held
    assert "n1" in held


def test_replay_never_mixes_in_facts_the_stage_is_changing():
    base = _facts(50)
    change = Change(stage=1, update=tuple(ChangeRecord(1, "update", Fact(f.id, f.subject, f.relation, "X", 1), f.object) for f in base[:10]))
    part = Replay(ReplayConfig(fraction=0.5, buffer_size=100))
    stage_facts = [r.fact for r in change.update]
    extra = part.extra_facts(stage_facts, _ctx(base, change), random.Random(0))
    assert len(extra) == 10  # fraction 0.5 -> as many replayed facts as stage facts
    assert not {f.id for f in extra} & {f.id for f in base[:10]}


@pytest.mark.parametrize("fraction,expected", [(0.0, 0), (0.2, 3), (0.75, 36)])
def test_replay_fraction_sets_the_share_of_replayed_facts(fraction, expected):
    part = Replay(ReplayConfig(fraction=fraction, buffer_size=1000))
    extra = part.extra_facts(_facts(12, "s"), _ctx(_facts(200)), random.Random(0))
    assert len(extra) == expected


def test_buffer_state_round_trips():
    base = _facts(30)
    part = Replay(ReplayConfig(buffer_size=8))
    part.observe(None, Change(stage=1, learn=tuple(_facts(5, "n"))), _ctx(base))
    clone = Replay(ReplayConfig(buffer_size=8))
    clone.load_state_dict(part.state_dict())
    assert clone.buffer.facts == part.buffer.facts and clone.buffer.seen == part.buffer.seen == 35


def test_replay_config_rejects_a_fraction_of_one():
    with pytest.raises(ValueError, match="fraction"):
        build_method("replay", {"replay": {"fraction": 1.0}})


def test_text_fraction_mixes_in_general_sentences_in_proportion():
    general = tuple(f"sentence {i} ." for i in range(100))
    part = Replay(ReplayConfig(fraction=0.5, buffer_size=100, text_fraction=0.25))
    ctx = StageContext(relations={}, base=_facts(50), stage=1, seed=0, tokenizer=None, accelerator=None, general_text=general)
    replayed = part.extra_facts(_facts(12, "s"), ctx, random.Random(0))
    docs = part.extra_documents(ctx, random.Random(0))
    # 12 stage facts + 12 replayed -> 24 fact statements; 0.25 of the total -> 8 sentences
    assert len(replayed) == 12 and len(docs) == 8 and set(docs) <= set(general)
    assert Replay(ReplayConfig(buffer_size=100)).extra_documents(ctx, random.Random(0)) == []  # off by default


def test_replaying_general_text_keeps_heldout_perplexity_lower_than_fact_replay_alone(tiny_stream, tiny_model_dir, accelerator):
    import torch

    from ckl.model import lm
    from ckl.model.scoring import perplexity

    change = tiny_stream.stages[0]
    ppl = {}
    for share in (0.0, 0.3):
        model, tokenizer = lm.load(tiny_model_dir)
        method = build_method("replay", {"train": {"epochs": 15, "lr": 3e-3}, "replay": {"fraction": 0.5, "text_fraction": share}})
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change, general_text=tiny_stream.general_train)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _ = method.apply(model, change, ctx)
        ppl[share] = perplexity(model.eval(), tokenizer, list(tiny_stream.general_heldout))
    print(ppl)
    assert ppl[0.3] < 0.8 * ppl[0.0]


def test_replay_config_rejects_a_text_fraction_of_one():
    with pytest.raises(ValueError, match="text_fraction"):
        build_method("replay", {"replay": {"text_fraction": 1.0}})


def test_history_replays_each_superseded_dated_fact_as_its_dated_sentence_only():
    """`history` on a dated world: from the stage that updates a fact on, its old version is
    replayed each epoch as "In 2020, X works for A." and never as the plain (stale)
    sentence; a later stage keeps replaying it, and it survives a checkpoint."""
    from ckl.data.facts import year_of
    from ckl.data.world import WorldConfig, build_world

    world = build_world(WorldConfig(seed=2, dated=True, people=40, stages=2, learn_per_stage=6, update_per_stage=16,
                                    forget_per_stage=4, general_train=50, general_heldout=20, background_people=30,
                                    min_probe_word_count=0))
    first, second = world.stages

    def ctx(change):
        return StageContext(world.relations, world.base, change.stage, 0, None, None, change=change)

    part = Replay(ReplayConfig(history=True))
    docs = part.extra_documents(ctx(first), random.Random(0))
    assert len(docs) == len(first.update) == 16
    for record, doc in zip(first.update, docs):
        assert doc.startswith(f"In {year_of(0)}, ") and record.fact.subject in doc and doc.endswith(f" {record.old_object}.")
    part.observe(None, first, ctx(first))
    assert [(f.object, f.valid_from, f.valid_until) for f in part.history] == [(r.old_object, 0, 1) for r in first.update]
    later = part.extra_documents(ctx(second), random.Random(0))
    assert len(later) == 32 and set(docs) <= {d for d in later}  # stage 1's history, and stage 2's updates' old versions
    clone = Replay(ReplayConfig(history=True))
    clone.load_state_dict(part.state_dict())
    assert clone.history == part.history
    assert Replay(ReplayConfig()).extra_documents(ctx(first), random.Random(0)) == []  # off by default: no old object in any form
    with pytest.raises(ValueError, match="history"):
        build_method("replay", {"replay": {"history": "yes"}})
