"""The synthetic world: deterministic, sized as configured, and cleanly split into cohorts."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ckl.data.stream import Stream, render_documents
from ckl.data.world import MUTABLE_RELATIONS, WorldConfig, build_world, probe_word_counts

REPO = Path(__file__).resolve().parents[2]
FILES = ("relations.jsonl", "facts.jsonl", "changes.jsonl", "general_train.txt", "general_heldout.txt", "background.txt", "qa_subjects.txt")
SMALL = dict(people=30, stages=3, learn_per_stage=5, update_per_stage=6, edit_per_stage=2, forget_per_stage=3,
             general_train=50, general_heldout=20, background_people=10, min_probe_word_count=0)


def saved_bytes(stream: Stream, directory: Path) -> dict[str, bytes]:
    stream.save(directory)
    return {name: (directory / name).read_bytes() for name in FILES}


@pytest.fixture(scope="module")
def world() -> Stream:
    return build_world(WorldConfig(seed=3, **SMALL))


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = saved_bytes(build_world(WorldConfig(seed=7)), tmp_path / "a")
    second = saved_bytes(build_world(WorldConfig(seed=7)), tmp_path / "b")
    assert first == second


def test_same_seed_gives_identical_files_in_a_fresh_process(tmp_path: Path) -> None:
    here = saved_bytes(build_world(WorldConfig(seed=7)), tmp_path / "here")
    script = "import sys; from ckl.data.world import WorldConfig, build_world; build_world(WorldConfig(seed=7)).save(sys.argv[1])"
    # A different hash seed would expose any dependence on set or dict-of-str hash order.
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "there")], check=True, cwd=REPO, env=env)
    assert {name: (tmp_path / "there" / name).read_bytes() for name in FILES} == here


def test_different_seed_gives_a_different_world(tmp_path: Path) -> None:
    a = saved_bytes(build_world(WorldConfig(seed=1)), tmp_path / "a")
    b = saved_bytes(build_world(WorldConfig(seed=2)), tmp_path / "b")
    for name in ("facts.jsonl", "changes.jsonl", "general_train.txt"):
        assert a[name] != b[name]


def test_counts_match_the_config(world: Stream) -> None:
    n_rel = len(world.relations)
    assert len(world.base) == SMALL["people"] * n_rel
    assert len({f.subject for f in world.base}) == SMALL["people"]
    assert world.T == SMALL["stages"]
    for change in world.stages:
        assert len(change.learn) == SMALL["learn_per_stage"] * n_rel
        assert len({f.subject for f in change.learn}) == SMALL["learn_per_stage"]
        assert change.count("update") == SMALL["update_per_stage"]
        assert change.count("edit") == SMALL["edit_per_stage"]
        assert change.count("forget") == SMALL["forget_per_stage"]
    assert len(world.general_train) == SMALL["general_train"]
    # per background person two biographies and a question for each fact
    assert len(world.background) == SMALL["background_people"] * (2 + n_rel)
    assert len(world.general_heldout) == SMALL["general_heldout"]
    assert world.meta == dataclasses.asdict(WorldConfig(seed=3, **SMALL))


def test_every_person_has_every_relation_and_a_unique_name(world: Stream) -> None:
    facts = list(world.base) + [f for ch in world.stages for f in ch.learn]
    by_subject = Counter(f.subject for f in facts)
    assert set(by_subject.values()) == {len(world.relations)}
    for subject in by_subject:
        assert {f.relation for f in facts if f.subject == subject} == set(world.relations)
        assert len(subject.split()) == 2
    assert len({f.id for f in facts}) == len(facts)


def test_every_person_has_a_first_name_of_their_own_by_default(world: Stream) -> None:
    # A first-name token then keys one person: what a subject-keyed editor needs (docs/knowledge.md).
    people = {f.subject for f in list(world.base) + [f for ch in world.stages for f in ch.learn]}
    assert len({name.split()[0] for name in people}) == len(people)


def test_shared_first_names_repeat_and_are_capped_only_when_distinct() -> None:
    shared = build_world(WorldConfig(seed=3, **SMALL | {"people": 300, "distinct_first_names": False}))
    firsts = Counter(f.subject.split()[0] for f in shared.base if f.relation == "birth_city")
    assert max(firsts.values()) > 1
    with pytest.raises(ValueError, match=r"WorldConfig\.distinct_first_names.*365 people.*only 350"):
        WorldConfig(**SMALL | {"people": 350})


def test_relations_have_enough_templates_questions_and_candidates(world: Stream) -> None:
    assert len(world.relations) >= 6
    for rel in world.relations.values():
        assert len(rel.templates) >= 3 and len(rel.paraphrases) >= 1
        assert len(rel.templates) + len(rel.paraphrases) >= 4
        assert len(rel.questions) >= 2
        assert not set(rel.templates) & set(rel.paraphrases)
        assert 12 <= len(rel.candidates) <= 20
        assert len(set(rel.candidates)) == len(rel.candidates)
        assert any(" " in c for c in rel.candidates), f"{rel.name} has no multi-word object"


def test_objects_are_unambiguous_for_exact_match(world: Stream) -> None:
    for rel in world.relations.values():
        for a in rel.candidates:
            assert "." not in a and "?" not in a
            for b in rel.candidates:
                if a != b:
                    assert b.split()[: len(a.split())] != a.split(), f"{a!r} is a prefix of {b!r}"


def test_names_share_no_word_with_any_object(world: Stream) -> None:
    object_words = {w for rel in world.relations.values() for c in rel.candidates for w in c.split()}
    name_words = {w for s in world.subjects() for w in s.split()}
    assert not object_words & name_words


def test_updates_change_only_mutable_relations_to_a_new_object(world: Stream) -> None:
    assert set(MUTABLE_RELATIONS) < set(world.relations)
    base = {f.id: f for f in world.base}
    for change in world.stages:
        for record in change.update:
            assert record.fact.relation in MUTABLE_RELATIONS
            assert record.old_object == base[record.fact.id].object
            assert record.fact.object != record.old_object
            assert record.fact.object in world.relations[record.fact.relation].candidates
        for record in change.edit:
            assert record.fact.object != record.old_object


def test_no_fact_changes_twice(world: Stream) -> None:
    ids = [r.fact.id for r in world.records()]
    assert len(ids) == len(set(ids))


def test_forget_requests_reference_known_untouched_base_facts(world: Stream) -> None:
    base = set(world.base)
    for change in world.stages:
        for fact in change.forget:
            assert fact in base


def test_saved_world_loads_back_equal(world: Stream, tmp_path: Path) -> None:
    world.save(tmp_path)
    loaded = Stream.load(tmp_path)
    assert loaded == world


def test_probes_cover_every_cohort(world: Stream) -> None:
    probes = world.probes()
    cohorts = {p.cohort for p in probes}
    expected = {"invariant"} | {f"{c}{j}" for j in range(1, world.T + 1) for c in ("stage", "stale", "forget")}
    assert cohorts == expected
    for cohort in expected:
        kinds = {p.kind for p in probes if p.cohort == cohort}
        assert kinds - {"question", "extraction"} == {"statement", "paraphrase"} and kinds & {"question", "extraction"}
    for p in probes:
        assert p.answer in p.candidates
    assert len({p.id for p in probes}) == len(probes)


def test_training_documents_never_contain_a_paraphrase(world: Stream) -> None:
    facts = list(world.base) + [f for ch in world.stages for f in ch.taught()]
    docs = render_documents(facts, world.relations, random.Random(0))
    text = "\n".join(docs + list(world.general_train))
    for fact in facts:
        for paraphrase in world.relations[fact.relation].paraphrases:
            assert paraphrase.format(subject=fact.subject) not in text


def test_paraphrases_share_no_text_with_training_forms(world: Stream) -> None:
    # Stronger than the document check: no rendering of any template or question could
    # ever contain a paraphrase, whatever subject and ordering the renderer picks.
    subject = "Alda Venmore"
    trained = [t.format(subject=subject) for rel in world.relations.values() for t in rel.templates + rel.questions]
    for rel in world.relations.values():
        for paraphrase in rel.paraphrases:
            assert not any(paraphrase.format(subject=subject) in t for t in trained)


def test_general_text_is_distinct_and_names_no_person(world: Stream) -> None:
    assert not set(world.general_train) & set(world.general_heldout)
    assert len(set(world.general_train)) == len(world.general_train)
    words = {w.strip(".,") for s in world.general_train + world.general_heldout for w in s.split()}
    names = {w for s in world.subjects() for w in s.split()}
    assert not words & names


def test_general_text_does_not_depend_on_world_size() -> None:
    small = build_world(WorldConfig(seed=5, people=10, stages=1, learn_per_stage=2, update_per_stage=2, forget_per_stage=1))
    big = build_world(WorldConfig(seed=5, people=40, stages=1, learn_per_stage=2, update_per_stage=2, forget_per_stage=1))
    assert small.general_train == big.general_train


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"people": 0}, "people"),
        ({"stages": -1}, "stages"),
        ({"learn_per_stage": 1.5}, "learn_per_stage"),
        ({"seed": True}, "seed"),
        ({"people": 2, "update_per_stage": 5}, "update_per_stage"),
        ({"people": 2, "update_per_stage": 0, "forget_per_stage": 7}, "forget_per_stage"),
        ({"learn_per_stage": 0, "update_per_stage": 0, "forget_per_stage": 0}, "stages"),
        ({"general_train": 10**6}, "general_train"),
        ({"distinct_first_names": 1}, "distinct_first_names"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"WorldConfig\.{name}"):
        WorldConfig(**kwargs)


def test_every_config_field_has_help() -> None:
    for f in dataclasses.fields(WorldConfig):
        assert f.metadata.get("help"), f.name


# ----------------------------------------------------------------- knowledge, not sentences


def test_question_answer_lines_are_trained_for_a_fixed_half_and_the_rest_are_extraction_probes(world: Stream) -> None:
    k0 = sorted({f.subject: i for i, f in enumerate(world.base)}, key=lambda s: [f.subject for f in world.base].index(s))
    half = round(SMALL["people"] * 0.5)
    assert set(k0[:half]) <= world.qa_subjects and not set(k0[half:]) & world.qa_subjects
    for change in world.stages:  # each stage's new people are split the same way
        people = list(dict.fromkeys(f.subject for f in change.learn))
        assert set(people[: round(len(people) * 0.5)]) <= world.qa_subjects
        assert not set(people[round(len(people) * 0.5):]) & world.qa_subjects
    probes = world.probes()
    questions = [p for p in probes if p.kind == "question"]
    extraction = [p for p in probes if p.kind == "extraction"]
    subject = {f.id: f.subject for f in world.base} | {f.id: f.subject for ch in world.stages for f in ch.learn}
    assert questions and extraction
    assert all(subject[p.fact_id] in world.qa_subjects for p in questions)
    assert all(subject[p.fact_id] not in world.qa_subjects for p in extraction)
    assert all(p.prompt.startswith("Question: ") for p in extraction)
    # training text never asks a question about a person outside the QA half
    docs = render_documents(world.base, world.relations, random.Random(0), questions=None, qa_subjects=world.qa_subjects)
    asked = {s for d in docs if d.startswith("Question:") for s in world.subjects() if s in d}
    assert asked == world.qa_subjects & {f.subject for f in world.base}


def test_qa_fraction_one_trains_every_question_and_makes_no_extraction_probe() -> None:
    stream = build_world(WorldConfig(seed=3, **(SMALL | {"qa_fraction": 1.0})))
    assert stream.qa_subjects == stream.subjects()
    assert not [p for p in stream.probes() if p.kind == "extraction"]


def test_paraphrases_never_meet_a_probed_person_but_every_probe_word_is_read_often() -> None:
    stream = build_world(WorldConfig(seed=0))  # the default world, checked as built
    counts = probe_word_counts(stream)
    assert min(counts.values()) >= WorldConfig().min_probe_word_count
    for word in ("breath", "diploma", "passionate", "trade"):  # held-out phrasing words
        assert counts[word] >= 20
    # the longest side of "{subject}" in each held-out phrasing ("first drew breath in")
    phrases = [max(p.split("{subject}"), key=len).strip() for r in stream.relations.values() for p in r.paraphrases]
    facts = list(stream.base) + [f for ch in stream.stages for f in ch.taught()]
    docs = render_documents(facts, stream.relations, random.Random(1), questions=None, biographies=3)
    assert not [p for p in phrases for d in docs if p in d]
    # ...they are read only in background biographies, whose names share no word with a probed person
    assert all(any(p in d for d in stream.background) for p in phrases)
    names = {w for s in stream.subjects() for w in s.split()}
    assert not {w.strip(".,?") for d in stream.background for w in d.split()} & names


def test_a_world_whose_probe_words_are_rarely_read_is_refused_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"WorldConfig\.min_probe_word_count=20: .*'breath'"):
        build_world(WorldConfig(seed=0, background_people=0))
    build_world(WorldConfig(seed=0, background_people=0, min_probe_word_count=0))  # the check can be switched off


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"qa_fraction": 0}, "qa_fraction"),
        ({"qa_fraction": 1.5}, "qa_fraction"),
        ({"qa_fraction": True}, "qa_fraction"),
        ({"people": 1, "qa_fraction": 0.4, "update_per_stage": 0}, "qa_fraction"),  # a QA half of 0 people
        ({"min_probe_word_count": -1}, "min_probe_word_count"),
        ({"background_people": -3}, "background_people"),
    ],
)
def test_bad_knowledge_options_raise_naming_the_option(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"WorldConfig\.{name}"):
        WorldConfig(**kwargs)


def test_the_qa_half_survives_save_and_load(world: Stream, tmp_path: Path) -> None:
    world.save(tmp_path / "w")
    loaded = Stream.load(tmp_path / "w")
    assert loaded.qa_subjects == world.qa_subjects
    assert [(p.id, p.kind) for p in loaded.probes()] == [(p.id, p.kind) for p in world.probes()]


def test_a_qa_subject_file_naming_an_unknown_person_is_an_input_error(world: Stream, tmp_path: Path) -> None:
    from ckl.core.errors import InputError

    world.save(tmp_path / "w")
    path = tmp_path / "w" / "qa_subjects.txt"
    path.write_text(path.read_text() + "Nobody Atall\n")
    with pytest.raises(InputError) as err:
        Stream.load(tmp_path / "w")
    assert err.value.file == str(path) and err.value.line == len(world.qa_subjects) + 1
