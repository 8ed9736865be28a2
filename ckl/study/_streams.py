"""Streams studies derive from the configured one: the same base knowledge (so the same
base model serves), other stages. Shared by the studies that edit or forget base facts."""

from __future__ import annotations

import dataclasses
import random

from ckl.data.facts import Fact


def untouched_people(stream) -> dict[str, list[Fact]]:
    """Subject -> its base facts, for the people no stage of `stream` updates, edits or
    asks to forget, in a stable order."""
    touched = {r.fact.subject for r in stream.records()} | {f.subject for ch in stream.stages for f in ch.forget}
    people: dict[str, list[Fact]] = {}
    for f in stream.base:
        if f.subject not in touched:
            people.setdefault(f.subject, []).append(f)
    return people


def one_fact_each(people: dict[str, list[Fact]], n: int, key: str, keep=lambda f: True) -> list[Fact] | None:
    """One base fact (passing `keep`) of each of `n` people drawn with the seed `key`, in
    the drawn order; None when fewer than `n` people have such a fact."""
    eligible = sorted(p for p, facts in people.items() if any(keep(f) for f in facts))
    if len(eligible) < n:
        return None
    rng = random.Random(key)
    rng.shuffle(eligible)
    return [rng.choice([f for f in people[p] if keep(f)]) for p in eligible[:n]]


def with_stages(stream, stages, study: str):
    """`stream` with `stages` instead of its own. The QA half loses the new people of the
    stages dropped, and their facts, now never taught, become the `unseen` facts (the never-seen
    floor of forget efficacy, the relearning attack's control) unless the stream has some."""
    stages = tuple(stages)
    kept = {f.subject for f in stream.base} | {f.subject for ch in stages for f in ch.learn}
    qa = None if stream.qa_subjects is None else frozenset(s for s in stream.qa_subjects if s in kept)
    unseen = stream.unseen or tuple(f for ch in stream.stages for f in ch.learn if f.subject not in kept)
    return dataclasses.replace(stream, stages=stages, qa_subjects=qa, unseen=unseen,
                               meta={**stream.meta, "derived_by": f"ckl study {study}"})


def unlearning_part(name, field: str) -> None:
    """Refuse (ConfigError on `field`) a name that is not a registered unlearning part."""
    from ckl.core.checks import ConfigError, did_you_mean
    from ckl.methods.base import load_builtin

    parts = sorted(n for n, e in load_builtin().items() if e.family == "part" and "forget" in e.kinds)
    if name not in parts:
        raise ConfigError(field, f"{field}: {name!r} is not an unlearning part{did_you_mean(str(name), parts)} (known: {', '.join(parts)})")


def forget_stage(stream, n: int, study: str):
    """The study's stream: one stage asking to forget `n` base facts, one per untouched
    person drawn with the study's seed (each person's other facts are the boundary); or
    `Refused` when the stream has fewer untouched people."""
    from ckl.data.stream import Change
    from ckl.study.base import Refused

    people = untouched_people(stream)
    chosen = one_fact_each(people, n, f"{study}/{n}")
    if chosen is None:
        return Refused(f"forgetting {n} facts of distinct people needs {n} untouched people; the stream has {len(people)}")
    return with_stages(stream, [Change(1, forget=tuple(sorted(chosen, key=lambda f: f.id)))], study)
