"""Editing benchmark records -> a ckl Stream: the sequential-editing-at-scale scenario.

CounterFact and zsRE records (ckl.formats.counterfact, ckl.formats.zsre) are parsed into
`EditCase`s, then `edit_stream` builds one stream from them:

- Base knowledge K0 is every case's true fact (`prompt` + `truth`) and its neighbourhood
  fact (`neighbour_prompt` + `neighbour_truth`). A model trained from scratch does not know
  these facts, so the base model is first taught K0 (a contamination-free protocol).
- Stage j edits cases (j-1)*batch+1 .. j*batch to their new targets (`ChangeRecord` kind
  "edit", old_object = the true target). An N-stage stream is sequential editing at scale:
  the runner scores after every batch the current edits (cohort stageJ), all earlier
  edits, and the knowledge left untouched.
- Cases after the first `edits` are never edited: their facts stay in the `invariant`
  cohort (retention of everything else).

Each case gets its own relation, because the records carry their own prompts: the
record's prompt is the relation's one training template, its rephrased prompt the
held-out paraphrase, and [truth, new target] its candidates, so candidate ranking on the
statement, paraphrase and neighbourhood probes is exactly CounterFact's ES, PS and NS
comparison P(new) vs P(true). Neighbourhood prompts name no subject field, so the whole
prompt is the "subject" of a one-template relation "{subject}"; `meta["neighbours"]` maps
each neighbourhood fact to its case, and `Stream.probes` puts the neighbourhood facts of
the cases edited in stage j in cohort `localJ`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ckl.errors import InputError
from ckl.facts import ChangeRecord, Fact, Relation
from ckl.stream import Stream, group_stages


@dataclass(frozen=True)
class EditCase:
    """One editing record: a true fact, its new target, a paraphrase and a neighbour."""

    id: str
    subject: str
    prompt: str  # contains `subject`
    paraphrase: str | None  # contains `subject`, or None
    target_new: str
    truth: str
    neighbour_prompt: str | None
    neighbour_truth: str | None


def template(prompt: str, subject: str) -> str:
    """`prompt` with its first occurrence of `subject` replaced by "{subject}" (braces
    already in the text are escaped for str.format)."""
    escaped = prompt.replace("{", "{{").replace("}", "}}")
    return escaped.replace(subject.replace("{", "{{").replace("}", "}}"), "{subject}", 1)


def edit_stream(cases: Sequence[EditCase], source: str, edits: int | None = None, batch: int = 100, untouched: int = 0) -> Stream:
    """Build the editing stream: the first `edits` cases (all by default) edited in stages
    of `batch`, the next `untouched` cases kept true.

    Raises:
        InputError: (naming `source`) when there are fewer cases than asked for, or a
            count is not positive.
    """
    edits = len(cases) - untouched if edits is None else edits
    if batch < 1:
        raise InputError(source, None, "batch", f"must be >= 1, got {batch}")
    if edits < 1 or untouched < 0:
        raise InputError(source, None, "edits", f"need at least one edit and untouched >= 0 (got edits={edits}, untouched={untouched})")
    if edits + untouched > len(cases):
        raise InputError(source, None, "edits", f"asked for {edits} edits + {untouched} untouched cases, but the file has {len(cases)} records")
    relations: dict[str, Relation] = {}
    base: list[Fact] = []
    records: list[ChangeRecord] = []
    neighbours: dict[str, str] = {}
    for i, case in enumerate(cases[: edits + untouched]):
        rel = f"{case.id}"
        relations[rel] = Relation(
            name=rel,
            templates=(template(case.prompt, case.subject),),
            paraphrases=(template(case.paraphrase, case.subject),) if case.paraphrase else (),
            candidates=(case.truth, case.target_new),
        )
        base.append(Fact(case.id, case.subject, rel, case.truth))
        if case.neighbour_prompt and case.neighbour_truth:
            nrel, nid = f"{case.id}/neighbour", f"{case.id}/neighbour"
            candidates = (case.neighbour_truth,) + ((case.target_new,) if case.target_new != case.neighbour_truth else ())
            relations[nrel] = Relation(name=nrel, templates=("{subject}",), candidates=candidates)
            base.append(Fact(nid, case.neighbour_prompt, nrel, case.neighbour_truth))
            neighbours[nid] = case.id
        if i < edits:
            stage = i // batch + 1
            new = Fact(case.id, case.subject, rel, case.target_new, stage, None)
            records.append(ChangeRecord(stage, "edit", new, old_object=case.truth))
    meta = {"source": source, "edits": edits, "batch": batch, "untouched": untouched, "neighbours": neighbours}
    return Stream(relations=relations, base=tuple(base), stages=group_stages(records), meta=meta)
