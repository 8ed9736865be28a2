"""Two-hop probes: a world with `two_hop` holds facts about its objects, asks questions
through them whose answers follow every update of the first fact, never trains those
answers for a probed person, and round-trips through its files; a relations file with a
broken chain is refused naming the line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckl.core.errors import InputError
from ckl.data.facts import ALL_PROBE_KINDS, TWO_HOP, read_relations
from ckl.data.stream import Stream, render_documents
from ckl.data.world import OBJECT_RELATION_SPECS, WorldConfig, build_world, person_relations

SMALL = dict(people=40, stages=2, learn_per_stage=6, update_per_stage=16, forget_per_stage=4,
             general_train=50, general_heldout=20, background_people=30, min_probe_word_count=0)


@pytest.fixture(scope="module")
def world() -> Stream:
    return build_world(WorldConfig(seed=2, two_hop=True, **SMALL))


def _bridge(world: Stream) -> dict[tuple[str, str], str]:
    chained = {name for _, name, *_ in OBJECT_RELATION_SPECS}
    return {(f.relation, f.subject): f.object for f in world.base if f.relation in chained}


def test_every_object_of_a_chained_relation_has_one_fact_in_k0_that_no_stage_changes(world: Stream) -> None:
    bridge = _bridge(world)
    for first, name, *_ in OBJECT_RELATION_SPECS:
        objects = world.relations[first].candidates
        assert {s for (r, s) in bridge if r == name} == set(objects)
        assert all(bridge[(name, o)] in world.relations[name].candidates for o in objects)
    touched = world.touched_ids()
    assert not any(f.id in touched for f in world.base if f.relation not in person_relations(world.relations))


def test_two_hop_answers_go_through_the_current_first_fact(world: Stream) -> None:
    bridge = _bridge(world)
    probes = [p for p in world.probes(kinds=ALL_PROBE_KINDS) if p.kind == TWO_HOP]
    facts = {f.id: f for f in world.base} | {r.fact.id: r.fact for r in world.records()}
    olds = {r.fact.id: r.old_object for r in world.records() if r.kind == "update"}
    assert {p.cohort for p in probes} >= {"invariant", "stage1", "stage2", "stale1", "stale2"}
    for p in probes:
        first = facts[p.fact_id]
        nxt = p.id.rsplit("/", 1)[1]
        through = olds[p.fact_id] if p.cohort.startswith("stale") else first.object
        assert p.answer == bridge[(nxt, through)] and p.answer in p.candidates
        assert first.subject in p.prompt and first.object not in p.prompt
        if p.fact_id in olds:  # an update whose two objects lead to the same city has no two-hop probe
            other = first.object if p.cohort.startswith("stale") else olds[p.fact_id]
            assert bridge[(nxt, other)] != p.answer and bridge[(nxt, other)] in p.candidates


def test_a_probed_persons_two_hop_sentence_is_never_trained_but_background_people_show_the_phrasing(world: Stream) -> None:
    import random

    prompts = [p.prompt for p in world.probes(kinds=ALL_PROBE_KINDS) if p.kind == TWO_HOP]
    taught = [f for ch in world.stages for f in ch.taught()]
    training = " ".join(render_documents([*world.base, *taught], world.relations, random.Random(0), questions=None, qa_subjects=world.qa_subjects, biographies=3))
    training += " ".join(world.general_train)
    assert not any(p in training for p in prompts)
    background = " ".join(world.background)
    for _, _, _, _, chain in OBJECT_RELATION_SPECS:
        assert background.count(chain.split("{subject}")[0]) >= SMALL["background_people"]


def test_without_two_hop_the_world_has_no_object_facts_and_no_two_hop_probes() -> None:
    plain = build_world(WorldConfig(seed=2, **SMALL))
    assert set(plain.relations) == set(person_relations(plain.relations))
    assert not any(r.two_hop for r in plain.relations.values())
    assert not any(p.kind == TWO_HOP for p in plain.probes(kinds=ALL_PROBE_KINDS))


def test_a_two_hop_world_round_trips_through_its_files(world: Stream, tmp_path: Path) -> None:
    world.save(tmp_path)
    again = Stream.load(tmp_path)
    assert again.relations == world.relations
    assert again.probes(kinds=ALL_PROBE_KINDS) == world.probes(kinds=ALL_PROBE_KINDS)
    rows = [json.loads(line) for line in (tmp_path / "relations.jsonl").read_text().splitlines()]
    assert {"relation": "headquarters", "template": "The employer of {subject} is headquartered in"} in next(r for r in rows if r["name"] == "employer")["two_hop"]
    assert "two_hop" not in next(r for r in rows if r["name"] == "birth_city")  # no chain, no field


@pytest.mark.parametrize(("chain", "why"), [
    ([{"relation": "nowhere", "template": "The x of {subject} is in"}], "unknown relation 'nowhere'"),
    ([{"relation": "b", "template": "no slot here"}], "must hold '{subject}'"),
    ([{"relation": "b", "template": "{subject.__class__} is"}], "must hold '{subject}'"),
    ([{"relation": "b"}], "template: missing required field"),
    ([{"relation": "b", "template": "{subject} x", "why": 1}], "unknown field 'why'"),
    ({"relation": "b"}, "must be a list"),
    ([{"relation": "b", "template": "{subject} x"}, {"relation": "b", "template": "{subject} y"}], "twice"),
])
def test_a_broken_chain_in_relations_jsonl_names_its_line_and_field(tmp_path: Path, chain, why: str) -> None:
    path = tmp_path / "relations.jsonl"
    rows = [{"name": "a", "templates": ["{subject} likes"], "two_hop": chain}, {"name": "b", "templates": ["{subject} is in"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as err:
        read_relations(path)
    assert (err.value.line, err.value.field) == (1, "two_hop") and why in err.value.message, str(err.value)
