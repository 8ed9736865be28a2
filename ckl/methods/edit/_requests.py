"""From a stage's change records to the prompt batches an editor works on."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ckl.methods.edit._prompts import PromptBatch, Row, encode, rewrite_rows
from ckl.data.facts import ChangeRecord, Fact, Relation
from ckl.data.stream import Change

EDIT_KINDS = ("edit", "update")  # records that rewrite one (subject, relation)'s object


def edit_records(change: Change) -> list[ChangeRecord]:
    """The stage's edits and updates, in stream order (edits first)."""
    return [r for kind in EDIT_KINDS for r in getattr(change, kind)]


def prefix_pool(general_text: Sequence[str], base: Sequence[Fact] = (), relations: dict[str, Relation] | None = None) -> list[str]:
    """Context prefixes: the base model's general training sentences. ROME samples short
    continuations from the model itself; sentences the model was trained on play the
    same role (varied contexts before the subject) without a generation loop. A stream
    with no general text (the CounterFact and zsRE imports) uses its base facts'
    statements instead ("<record prompt> <true object>."), the only other text its base
    model read, so that every editor works with context prefixes as the papers do."""
    pool = [t for t in general_text if t.strip()]
    if pool or not relations:
        return pool
    return [f"{(relations[f.relation].probe_template or relations[f.relation].templates[0]).format(subject=f.subject)} {f.object}."
            for f in base if f.relation in relations]


def choose_prefixes(pool: Sequence[str], n: int, seed: int, key: str) -> list[str]:
    if not pool or n <= 0:
        return []
    rng = random.Random(f"ckl.editing/{seed}/{key}")
    return rng.sample(list(pool), min(n, len(pool)))


@dataclass
class EditBatches:
    rewrite: PromptBatch  # every edit's prompts with the new object (first row: the bare prompt)
    essence: PromptBatch  # one "{subject} is a" row per edit (KL term)


def edit_batches(
    tokenizer, records: Sequence[ChangeRecord], relations: dict[str, Relation], pool: Sequence[str],
    n_prefixes: int, essence_prompt: str, seed: int, subject_token: str = "last",
) -> EditBatches:
    rows: list[Row] = []
    essence: list[Row] = []
    for g, r in enumerate(records):
        # a context that states the edited subject's old fact would argue against the edit
        prefixes = choose_prefixes([p for p in pool if r.fact.subject not in p], n_prefixes, seed, r.fact.id)
        rows += rewrite_rows(r.fact.subject, relations[r.fact.relation], r.fact.object, prefixes, g)
        essence.append(Row("", essence_prompt, r.fact.subject, None, g))
    return EditBatches(encode(tokenizer, rows, subject_token), encode(tokenizer, essence, subject_token))
