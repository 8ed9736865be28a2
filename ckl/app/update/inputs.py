"""The files a practitioner hands `ckl update`, read and checked before any work.

    --relations  relations.jsonl (docs/formats.md): templates to train and probe with
    --facts      facts.jsonl: what the model knows now (optional; resolves ids in
                 --update/--forget, feeds replay, and is the pool the keep-set is
                 sampled from)
    --learn      facts.jsonl: new facts (ids must be new)
    --update     one changed fact per line: {id, object} for a fact in --facts, or
                 {id, subject, relation, object[, old_object]} for one that is not;
                 the old object (from --facts or `old_object`) is probed as stale
    --forget     one fact per line: {id} for a fact in --facts, or
                 {id, subject, relation, object}
    --keep       facts.jsonl: facts that must stay known
    --corpus     plain text to continue pretraining on (domain text), one document a
                 line; trained as it is, beside the facts (continual pre-training)

Every mistake is an InputError naming file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckl.core.errors import InputError
from ckl.data.check import FACT_KEYS, RELATION_KEYS, Finding, fact_findings, relation_findings, unknown_keys
from ckl.data.facts import MAX_CORPUS_CHARS, ChangeRecord, Fact, Relation, iter_jsonl, read_facts, read_input_text, read_relations, text_field
from ckl.data.stream import Change


@dataclass
class UpdateInputs:
    relations: dict[str, Relation]
    known: list[Fact]  # --facts (may be empty)
    change: Change  # stage 1: learn / update / forget
    keep: list[Fact] | None  # --keep, or None to sample from `known`


def _resolve(obj: dict, path: str, line: int, known: dict[str, Fact], relations: dict[str, Relation], need_object: bool) -> tuple[Fact, str | None]:
    """(the fact as the line describes it, its previous object if known)."""
    fid = text_field(obj, "id", path, line, True)
    old = known.get(fid)
    subject = text_field(obj, "subject", path, line, old is None)
    relation = text_field(obj, "relation", path, line, old is None)
    if old is not None:
        for key, given in (("subject", subject), ("relation", relation)):
            if given is not None and given != getattr(old, key):
                raise InputError(path, line, key, f"{given!r} does not match fact {fid!r} in --facts ({getattr(old, key)!r})")
        subject, relation = old.subject, old.relation
    if relation not in relations:
        raise InputError(path, line, "relation", f"unknown relation {relation!r} (known: {', '.join(sorted(relations))})")
    obj_text = text_field(obj, "object", path, line, need_object or old is None)
    return Fact(fid, subject, relation, obj_text or old.object, 1), (old.object if old else None)


def read_updates(path: str | Path, known: dict[str, Fact], relations: dict[str, Relation]) -> list[ChangeRecord]:
    path = str(path)
    records = []
    for line, obj in iter_jsonl(path):
        fact, previous = _resolve(obj, path, line, known, relations, need_object=True)
        old_object = text_field(obj, "old_object", path, line, False) or previous
        if old_object is not None and previous is not None and old_object != previous:
            raise InputError(path, line, "old_object", f"{old_object!r} does not match fact {fact.id!r} in --facts ({previous!r})")
        if old_object == fact.object:
            raise InputError(path, line, "object", f"new object equals the current one ({fact.object!r})")
        records.append(ChangeRecord(1, "update", fact, old_object=old_object))
    return records


def read_forgets(path: str | Path, known: dict[str, Fact], relations: dict[str, Relation]) -> list[Fact]:
    path = str(path)
    return [_resolve(obj, path, line, known, relations, need_object=False)[0] for line, obj in iter_jsonl(path)]


def _no_duplicates(groups: dict[str, list[str]]) -> None:
    where: dict[str, str] = {}
    for source, ids in groups.items():
        for fid in ids:
            if fid in where:
                raise InputError(source, None, "id", f"fact {fid!r} is also in {where[fid]}: a fact changes once per update")
            where[fid] = source


def read_corpus_text(path: str | Path) -> list[str]:
    """--corpus: one document a line (blank lines skipped, still counted); a line longer
    than the corpus limit is an InputError naming it."""
    docs = []
    for line, raw in enumerate(read_input_text(path).splitlines(), 1):
        text = raw.strip()
        if len(text) > MAX_CORPUS_CHARS:
            raise InputError(str(path), line, None, f"is {len(text)} characters long; at most {MAX_CORPUS_CHARS} are allowed a document (split it over lines)")
        docs += [text] if text else []
    if not docs:
        raise InputError(str(path), None, None, "no documents in the corpus file (one document a line)")
    return docs


def read_inputs(relations: Path, facts: Path | None, learn: Path | None, update: Path | None,
                forget: Path | None, keep: Path | None, corpus: Path | None = None) -> UpdateInputs:
    """Read and cross-check every input file.

    Raises:
        InputError: a file is missing or malformed, a learned id already exists, a fact
            is changed twice, or nothing is asked of the model.
    """
    rels = read_relations(relations)
    known = read_facts(facts, rels) if facts else []
    by_id = {f.id: f for f in known}
    learned = read_facts(learn, rels) if learn else []
    for f in learned:
        if f.id in by_id:
            raise InputError(str(learn), None, "id", f"fact {f.id!r} already exists in --facts; change it with --update")
    updates = read_updates(update, by_id, rels) if update else []
    forgets = read_forgets(forget, by_id, rels) if forget else []
    _no_duplicates({str(learn): [f.id for f in learned], str(update): [r.fact.id for r in updates], str(forget): [f.id for f in forgets]})
    documents = read_corpus_text(corpus) if corpus else []
    if not (learned or updates or forgets or documents):
        raise InputError("<options>", None, None, "nothing to do: give --learn, --update or --forget with at least one fact, or a --corpus")
    change = Change(1, learn=tuple(Fact(f.id, f.subject, f.relation, f.object, 1) for f in learned),
                    update=tuple(updates), forget=tuple(forgets), corpus=tuple(documents))
    kept = read_facts(keep, rels) if keep else None
    if kept is not None:
        touched = change.touched()
        clash = next((f.id for f in kept if f.id in touched), None)
        if clash is not None:
            raise InputError(str(keep), None, "id", f"fact {clash!r} is also being changed; a keep-set fact must stay as it is")
        if not kept:
            raise InputError(str(keep), None, None, "no facts in the keep-set file")
    elif not known:
        raise InputError("<options>", None, None, "give --keep FILE (facts that must stay) or --facts FILE to sample them from")
    return UpdateInputs(rels, known, change, kept)


UPDATE_KEYS = ("id", "object", "subject", "relation", "old_object")
FORGET_KEYS = ("id", "subject", "relation", "object")


def check_inputs(inputs: UpdateInputs, relations: Path, facts: Path | None, learn: Path | None, update: Path | None,
                 forget: Path | None, keep: Path | None) -> list[Finding]:
    """`ckl check`'s rules on the files of an update (docs/formats.md): misspelled keys,
    paraphrases that are training templates, facts that contradict each other, a learned
    fact that contradicts a known one (that is an --update), candidate sets the rank metric
    cannot use, objects with stop tokens."""
    found: list[Finding] = list(unknown_keys(relations, RELATION_KEYS))
    for path, keys in ((facts, FACT_KEYS), (learn, FACT_KEYS), (keep, FACT_KEYS), (update, UPDATE_KEYS), (forget, FORGET_KEYS)):
        if path:
            found += unknown_keys(path, keys)
    learned = list(inputs.change.learn)
    objects: dict[str, set[str]] = {}
    for f in [*inputs.known, *learned, *(r.fact for r in inputs.change.update)]:
        objects.setdefault(f.relation, set()).add(f.object)
    found += relation_findings(relations, inputs.relations, objects)
    if facts:
        found += fact_findings(facts, inputs.known)
    if learn:
        found += fact_findings(learn, learned)
        changed = inputs.change.touched()
        held = {(f.subject, f.relation): f for f in inputs.known if f.id not in changed}
        lines = {obj.get("id", "").strip(): line for line, obj in iter_jsonl(learn) if isinstance(obj.get("id"), str)}
        for f in learned:
            old = held.get((f.subject, f.relation))
            if old is not None and old.object != f.object:
                found.append(Finding("error", str(learn), lines.get(f.id), "object",
                                     f"{f.subject!r} {f.relation!r} = {f.object!r} contradicts fact {old.id!r} in --facts ({old.object!r}): "
                                     "the model would be taught both; give it in --update (id, object) instead"))
    return sorted(found, key=lambda f: (f.severity != "error", f.file, f.line or 0))
