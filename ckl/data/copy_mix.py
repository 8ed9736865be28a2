"""Pretraining text that teaches a model to read facts from its context.

In-context editing (IKE, Zheng et al. 2023) shows the new fact in the prompt and relies on
the model using it. Large pretrained models learn this from web text; a tiny model trained
from scratch on a fact list does not. With `PretrainConfig.copy_fraction > 0`, pretraining
mixes in documents of this form (IKE's demonstration format, `NEW_FACT`):

    New fact: Ada Vale was born in Karsk. Ada Vale was born in Karsk.          (copy)
    New fact: Ada Vale was born in Karsk. Bo Lind works as a baker.            (retain)

The object in the context is a random object of another fact, never the fact's own
candidates (so no edit target of an editing stream leaks into pretraining). Half of the
documents ask the fact in the context (answer: the context's object, also under a
different training template of the relation when it has one), half ask an unrelated base
fact (answer: its true object), so the model learns to copy only when the context is about
the question. This is a deviation from "a base model trained on the facts only", and ckl's
docs say so wherever a copy-mix model is used.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ckl.data.facts import Fact, Relation

NEW_FACT = "New fact: {statement}."


def demonstration(prompt: str, obj: str) -> str:
    """The in-context form of one fact (what IKE prepends and what the copy mix teaches)."""
    return NEW_FACT.format(statement=f"{prompt} {obj}")


def copy_documents(facts: Sequence[Fact], relations: dict[str, Relation], rng: random.Random, n: int) -> list[str]:
    """`n` copy/retain documents over `facts` (deterministic for a given `rng` state)."""
    if n <= 0 or len(facts) < 2:
        return []
    objects = sorted({f.object for f in facts})
    docs = []
    for _ in range(n):
        fact = facts[rng.randrange(len(facts))]
        rel = relations[fact.relation]
        banned = {fact.object, *rel.candidates}
        other = objects[rng.randrange(len(objects))]
        if other in banned:
            continue  # rare; the document is skipped rather than leaking a candidate
        context = demonstration(rng.choice(rel.templates).format(subject=fact.subject), other)
        if rng.random() < 0.5:
            query = f"{rng.choice(rel.templates).format(subject=fact.subject)} {other}."
        else:
            probe = facts[rng.randrange(len(facts))]
            if probe.subject == fact.subject:
                continue
            query = f"{rng.choice(relations[probe.relation].templates).format(subject=probe.subject)} {probe.object}."
        docs.append(f"{context} {query}")
    return docs
