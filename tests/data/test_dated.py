"""Dated facts and as_of probes (prompted knowledge cutoffs): a world with `dated` states
the changing relations' facts with the year they became true, asks for them as of a year
in a phrasing no probed person's text uses, makes the old object the stale cohort's
target, leaves an undated world exactly as it was, and round-trips through its files; a
relations file with a bad `dated` is refused naming its line and field."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ckl.core.errors import InputError
from ckl.data.facts import ALL_PROBE_KINDS, AS_OF, read_relations, year_of
from ckl.data.stream import Stream, render_documents
from ckl.data.world import MUTABLE_RELATIONS, WorldConfig, build_world

SMALL = dict(people=40, stages=2, learn_per_stage=6, update_per_stage=16, forget_per_stage=4,
             general_train=50, general_heldout=20, background_people=30, min_probe_word_count=0)


@pytest.fixture(scope="module")
def world() -> Stream:
    return build_world(WorldConfig(seed=2, dated=True, **SMALL))


def _training_text(world: Stream) -> str:
    taught = [f for ch in world.stages for f in ch.taught()]
    docs = render_documents([*world.base, *taught], world.relations, random.Random(0), questions=None,
                            qa_subjects=world.qa_subjects, biographies=3)
    return " ".join(docs)


def test_only_the_relations_that_change_are_dated(world: Stream) -> None:
    assert {n for n, r in world.relations.items() if r.dated} == set(MUTABLE_RELATIONS)
    assert all(r.fact.relation in MUTABLE_RELATIONS for r in world.records() if r.kind == "update")


def test_every_dated_fact_is_trained_with_the_year_it_became_true(world: Stream) -> None:
    text = _training_text(world)
    updates = [r for r in world.records() if r.kind == "update"]
    for r in updates:
        assert f"In {year_of(r.stage)}, " in text and r.fact.object in text
    # the old object of every update with K0's year, the new one with its stage's
    for r in updates:
        old = next(f for f in world.base if f.id == r.fact.id)
        assert any(f"In {year_of(0)}, " in d and r.fact.subject in d and old.object in d
                   for d in render_documents([old], world.relations, random.Random(1)))
        assert any(f"In {year_of(r.stage)}, " in d and r.fact.subject in d and r.fact.object in d
                   for d in render_documents([r.fact], world.relations, random.Random(1)))


def test_the_stale_cohorts_as_of_probe_asks_for_the_old_object_as_of_its_year(world: Stream) -> None:
    probes = [p for p in world.probes(kinds=ALL_PROBE_KINDS) if p.kind == AS_OF]
    olds = {r.fact.id: (r.old_object, r.fact.object, r.stage) for r in world.records() if r.kind == "update"}
    assert {p.cohort for p in probes} >= {"invariant", "stage1", "stage2", "stale1", "stale2"}
    for p in probes:
        if p.fact_id not in olds or p.change != "update":
            continue
        old, new, stage = olds[p.fact_id]
        if p.cohort.startswith("stale"):
            assert p.answer == old and p.prompt.startswith(f"As of {year_of(0)}, ") and new in p.candidates
        else:
            assert p.answer == new and p.prompt.startswith(f"As of {year_of(stage)}, ") and old in p.candidates
    relation = {f.id: f.relation for f in world.base} | {r.fact.id: r.fact.relation for r in world.records()}
    assert all(world.relations[relation[p.fact_id]].dated for p in probes)  # only dated relations are asked as of a year


def test_no_probed_persons_text_says_as_of_but_the_background_shows_both_phrasings(world: Stream) -> None:
    prompts = [p.prompt for p in world.probes(kinds=ALL_PROBE_KINDS) if p.kind == AS_OF]
    training = _training_text(world) + " ".join(world.general_train)
    assert "As of" not in training and not any(p in training for p in prompts)
    background = world.background
    for stage in range(world.T + 1):  # every year a probe asks about is read, in both phrasings
        assert sum(f"As of {year_of(stage)}, " in d for d in background) >= SMALL["background_people"] // 2
        assert sum(f"In {year_of(stage)}, " in d for d in background) >= SMALL["background_people"] // 2


def test_an_undated_world_is_rendered_and_probed_as_before() -> None:
    plain = build_world(WorldConfig(seed=2, **SMALL))
    assert not any(r.dated for r in plain.relations.values())
    assert not any(p.kind == AS_OF for p in plain.probes(kinds=ALL_PROBE_KINDS))
    assert "As of" not in " ".join(plain.background) and " In 2020, " not in " " + _training_text(plain)


def test_a_dated_world_round_trips_through_its_files(world: Stream, tmp_path: Path) -> None:
    world.save(tmp_path)
    again = Stream.load(tmp_path)
    assert again.relations == world.relations
    assert again.probes(kinds=ALL_PROBE_KINDS) == world.probes(kinds=ALL_PROBE_KINDS)
    rows = {r["name"]: r for r in map(json.loads, (tmp_path / "relations.jsonl").read_text().splitlines())}
    assert rows["employer"]["dated"] is True and "dated" not in rows["birth_city"]  # not dated, no field


@pytest.mark.parametrize("value", ["yes", 1, None, []])
def test_a_dated_field_that_is_not_true_or_false_names_its_line(tmp_path: Path, value) -> None:
    path = tmp_path / "relations.jsonl"
    rows = [{"name": "a", "templates": ["{subject} likes"]}, {"name": "b", "templates": ["{subject} is in"], "dated": value}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as err:
        read_relations(path)
    assert (err.value.line, err.value.field) == (2, "dated") and "true or false" in err.value.message


def test_world_config_refuses_a_dated_flag_that_is_not_a_bool() -> None:
    with pytest.raises(ValueError, match="dated"):
        WorldConfig(dated="yes")
