"""The knowledge stream: base knowledge K0, stages of changes, probes and training text.

A stream lives in a directory (docs/formats.md):
    relations.jsonl   the relations and their templates
    facts.jsonl       base knowledge K0 (true before stage 1)
    changes.jsonl     stage 1..T: learn / update / edit / forget records
    general_train.txt general text mixed into pretraining (optional)
    background.txt    documents about people outside every cohort, mixed into pretraining
                      (optional; the synthetic world's background biographies)
    qa_subjects.txt   the subjects whose question-answer lines are trained (optional)
    general_heldout.txt held-out general text for perplexity (optional)
    corpus.jsonl      each stage's domain corpus: documents trained on in that stage, and
                      held-out ones for the domain's perplexity (optional; continual
                      pre-training, CPT)
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ckl.core.errors import InputError
from ckl.data import cohorts
from ckl.data.facts import (
    AS_OF,
    MAX_STAGE,
    PROBE_KINDS,
    STAGE_KINDS,
    TWO_HOP,
    ChangeRecord,
    CorpusDocument,
    Fact,
    Probe,
    Relation,
    atomic_write_text,
    change_row,
    fact_row,
    iter_jsonl,
    jsonl_text,
    parse_json,
    corpus_row,
    read_changes,
    read_corpus,
    read_facts,
    read_input_text,
    read_relations,
    relation_row,
    year_of,
)

QUESTION_FORMAT = "Question: {question} Answer:"


@dataclass(frozen=True)
class Change:
    """What one stage asks of the model."""

    stage: int
    learn: tuple[Fact, ...] = ()
    update: tuple[ChangeRecord, ...] = ()
    edit: tuple[ChangeRecord, ...] = ()
    forget: tuple[Fact, ...] = ()
    corpus: tuple[str, ...] = ()  # documents of the stage's domain corpus (unlabeled text to train on)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The change kinds this stage actually contains, in canonical order."""
        return tuple(k for k in STAGE_KINDS if getattr(self, k))

    def taught(self) -> list[Fact]:
        """Facts the model should know after this stage (new objects for updates/edits)."""
        return list(self.learn) + [r.fact for r in self.update] + [r.fact for r in self.edit]

    def count(self, kind: str) -> int:
        return len(getattr(self, kind))

    def touched(self) -> set[str]:
        """Ids of every fact this stage learns, updates, edits or forgets."""
        return {f.id for f in self.learn} | {f.id for f in self.forget} | {r.fact.id for r in self.update + self.edit}


@dataclass
class Stream:
    """Base knowledge plus T stages of changes, with the text resources around them."""

    relations: dict[str, Relation]
    base: tuple[Fact, ...]
    stages: tuple[Change, ...]
    general_train: tuple[str, ...] = ()
    general_heldout: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
    # Documents about people outside every cohort (background.txt): pretraining text that
    # teaches the relations' phrasings on people who are never probed.
    background: tuple[str, ...] = ()
    # Facts no stage ever teaches (unseen.jsonl): the never-seen floor of forget efficacy.
    unseen: tuple[Fact, ...] = ()
    # The subjects whose question-answer lines are trained (qa_subjects.txt); the questions
    # about every other subject are `extraction` probes. None: every subject's are trained.
    qa_subjects: frozenset[str] | None = None
    # Stage -> held-out documents of that stage's domain corpus (corpus.jsonl, `heldout`):
    # their perplexity, after every stage, is how much of each domain was learned and kept.
    domain_heldout: dict[int, tuple[str, ...]] = field(default_factory=dict)

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, directory: str | Path) -> Stream:
        """Load and validate a stream directory; errors name file, line and field."""
        d = Path(directory)
        if not d.is_dir():
            raise InputError(str(d), None, None, "stream directory not found")
        relations = read_relations(d / "relations.jsonl")
        base = read_facts(d / "facts.jsonl", relations)
        changes_path = d / "changes.jsonl"
        records = read_changes(changes_path, base, relations) if changes_path.exists() else []
        meta_path = d / "meta.json"
        meta = parse_json(read_input_text(meta_path), str(meta_path), None) if meta_path.exists() or meta_path.is_symlink() else {}
        if not isinstance(meta, dict):
            raise InputError(str(meta_path), 1, None, f"expected a JSON object ({{\"stages\": ..., \"meta\": {{...}}}}), got {type(meta).__name__}")
        stages = meta.get("stages")
        if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or not 0 <= stages <= MAX_STAGE):
            raise InputError(str(meta_path), None, "stages", f"must be an integer in [0, {MAX_STAGE}], got {stages!r}")
        meta = meta.get("meta", {}) if isinstance(meta.get("meta", {}), dict) else {}
        corpus = _read_corpus(d / "corpus.jsonl", stages if isinstance(stages, int) else None)
        at_least = max([stages if isinstance(stages, int) else 0, *(doc.stage for doc in corpus)])
        return cls(
            relations=relations,
            base=tuple(base),
            stages=with_corpus(group_stages(records, at_least), corpus),
            domain_heldout=heldout_by_stage(corpus),
            general_train=_read_lines(d / "general_train.txt"),
            general_heldout=_read_lines(d / "general_heldout.txt"),
            meta=meta,
            background=_read_lines(d / "background.txt"),
            unseen=_read_unseen(d / "unseen.jsonl", relations, base),
            qa_subjects=_read_qa_subjects(d / "qa_subjects.txt", base, records),
        )

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "relations.jsonl", jsonl_text(relation_row(r) for r in self.relations.values()))
        atomic_write_text(d / "facts.jsonl", jsonl_text(fact_row(f) for f in self.base))
        atomic_write_text(d / "changes.jsonl", jsonl_text(change_row(r) for r in self.records()))
        atomic_write_text(d / "general_train.txt", "".join(s + "\n" for s in self.general_train))
        atomic_write_text(d / "general_heldout.txt", "".join(s + "\n" for s in self.general_heldout))
        corpus = self.corpus_documents()
        for name, present in (("background.txt", self.background), ("qa_subjects.txt", self.qa_subjects is not None), ("corpus.jsonl", corpus)):
            if not present:  # a file left by an earlier stream in this directory is not this one's
                (d / name).unlink(missing_ok=True)
        if self.background:
            atomic_write_text(d / "background.txt", "".join(s + "\n" for s in self.background))
        if corpus:
            atomic_write_text(d / "corpus.jsonl", jsonl_text(corpus_row(doc) for doc in corpus))
        if self.unseen:
            atomic_write_text(d / "unseen.jsonl", jsonl_text(fact_row(f) for f in self.unseen))
        if self.qa_subjects is not None:
            atomic_write_text(d / "qa_subjects.txt", "".join(s + "\n" for s in sorted(self.qa_subjects)))
        # the stage count survives empty trailing stages, which changes.jsonl cannot show
        meta = {"stages": self.T, "meta": self.meta}
        atomic_write_text(d / "meta.json", json.dumps(meta, sort_keys=True, indent=2) + "\n")

    def records(self) -> list[ChangeRecord]:
        out: list[ChangeRecord] = []
        for ch in self.stages:
            out += [ChangeRecord(ch.stage, "learn", f) for f in ch.learn]
            out += list(ch.update) + list(ch.edit)
            out += [ChangeRecord(ch.stage, "forget", f) for f in ch.forget]
        return out

    def corpus_documents(self) -> list[CorpusDocument]:
        """Every corpus document of the stream (trained and held out), stage by stage."""
        out = []
        for ch in self.stages:
            out += [CorpusDocument(ch.stage, text) for text in ch.corpus]
            out += [CorpusDocument(ch.stage, text, heldout=True) for text in self.domain_heldout.get(ch.stage, ())]
        return out

    # ------------------------------------------------------------------ views
    @property
    def T(self) -> int:
        return len(self.stages)

    def touched_ids(self) -> set[str]:
        return {r.fact.id for r in self.records()}

    def invariant(self) -> list[Fact]:
        """Base facts that no stage touches: the knowledge that must stay."""
        touched = self.touched_ids()
        return [f for f in self.base if f.id not in touched]

    def known_after(self, stage: int) -> dict[str, Fact]:
        """The facts true after `stage` (0 = base knowledge), keyed by id."""
        state = {f.id: f for f in self.base}
        for ch in self.stages[:stage]:
            for f in ch.taught():
                state[f.id] = f
            for f in ch.forget:
                state.pop(f.id, None)
        return state

    def boundary(self, stage: int) -> list[Fact]:
        """The forgetting boundary of `stage` (KnowUnDo): invariant facts about the subjects
        whose facts this stage asks to forget. They must stay known."""
        subjects = {f.subject for f in self.stages[stage - 1].forget}
        return [f for f in self.invariant() if f.subject in subjects]

    def subjects(self) -> set[str]:
        return {f.subject for f in self.base} | {f.subject for ch in self.stages for f in ch.learn}

    def neighbourhoods(self) -> dict[int, list[Fact]]:
        """Stage j -> the invariant neighbourhood facts of the facts edited in stage j
        (`meta["neighbours"]`: neighbour fact id -> edited fact id, written by the editing
        importers, ckl.data.formats.edits). Their probes form cohort `localJ` (locality)."""
        links = self.meta.get("neighbours") or {}
        if not links:
            return {}
        edited = {r.fact.id: r.stage for r in self.records() if r.kind == "edit"}
        out: dict[int, list[Fact]] = defaultdict(list)
        for f in self.invariant():
            if links.get(f.id) in edited:
                out[edited[links[f.id]]].append(f)
        return dict(out)

    # ------------------------------------------------------------------ probes
    def probes(self, kinds: Sequence[str] = PROBE_KINDS, max_candidates: int = 10) -> list[Probe]:
        """All probe sets, by cohort. See docs/formats.md for the cohort names."""
        out: list[Probe] = []
        made = functools.partial(make_probes, qa_subjects=self.qa_subjects)
        # two-hop probes go through invariant facts only: a second hop that a stage changes
        # would give one probe two answers over time
        bridge = {(f.relation, f.subject): f.object for f in self.invariant()} if TWO_HOP in kinds else {}

        dated = AS_OF in kinds

        def probes_for(facts, relations, cohort, stage, change, kinds, max_candidates, also=None):
            return [*made(facts, relations, cohort, stage, change, kinds, max_candidates, also),
                    *two_hop_probes(facts, relations, bridge, cohort, stage, change, max_candidates, also),
                    *(as_of_probes(facts, relations, cohort, stage, change, max_candidates, also) if dated else ())]
        local = self.neighbourhoods()
        neighbour_ids = {f.id for group in local.values() for f in group}
        kept = [f for f in self.invariant() if f.id not in neighbour_ids]
        out += probes_for(kept, self.relations, cohorts.INVARIANT, 0, "base", kinds, max_candidates)
        state = {f.id: f for f in self.base}  # the facts true before each stage: an old object's own date
        for ch in self.stages:
            j = ch.stage
            out += probes_for(ch.learn, self.relations, cohorts.name(cohorts.STAGE, j), j, "learn", kinds, max_candidates)
            out += probes_for(local.get(j, []), self.relations, cohorts.name(cohorts.LOCAL, j), j, "base", kinds, max_candidates)
            for kind in ("update", "edit"):
                recs = getattr(ch, kind)
                olds = {r.fact.id: r.old_object for r in recs}
                out += probes_for([r.fact for r in recs], self.relations, cohorts.name(cohorts.STAGE, j), j, kind, kinds, max_candidates, olds)
                stale = [Fact(r.fact.id, r.fact.subject, r.fact.relation, r.old_object,
                              state[r.fact.id].valid_from if r.fact.id in state else 0) for r in recs]
                news = {r.fact.id: r.fact.object for r in recs}
                out += probes_for(stale, self.relations, cohorts.name(cohorts.STALE, j), j, kind, kinds, max_candidates, news)
            out += probes_for(ch.forget, self.relations, cohorts.name(cohorts.FORGET, j), j, "forget", kinds, max_candidates)
            state.update((f.id, f) for f in ch.taught())
            for f in ch.forget:
                state.pop(f.id, None)
        out += probes_for(self.unseen, self.relations, cohorts.UNSEEN, 0, "unseen", kinds, max_candidates)
        return out


def group_stages(records: Iterable[ChangeRecord], at_least: int = 0) -> tuple[Change, ...]:
    """Group change records by stage; stages 1..max(last stage, at_least), empty ones included."""
    by_stage: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_stage[r.stage][r.kind].append(r.fact if r.kind in ("learn", "forget") else r)
    last = max([at_least, *by_stage])
    return tuple(
        Change(
            stage=s,
            learn=tuple(by_stage[s]["learn"]),
            update=tuple(by_stage[s]["update"]),
            edit=tuple(by_stage[s]["edit"]),
            forget=tuple(by_stage[s]["forget"]),
        )
        for s in range(1, last + 1)
    )


def with_corpus(stages: tuple[Change, ...], corpus: Sequence[CorpusDocument]) -> tuple[Change, ...]:
    """The stages with their domain corpora's training documents attached."""
    texts: dict[int, list[str]] = defaultdict(list)
    for doc in corpus:
        if not doc.heldout:
            texts[doc.stage].append(doc.text)
    return tuple(replace(ch, corpus=tuple(texts[ch.stage])) if texts.get(ch.stage) else ch for ch in stages)


def heldout_by_stage(corpus: Sequence[CorpusDocument]) -> dict[int, tuple[str, ...]]:
    """Stage -> its held-out corpus documents, in file order."""
    out: dict[int, list[str]] = defaultdict(list)
    for doc in corpus:
        if doc.heldout:
            out[doc.stage].append(doc.text)
    return {stage: tuple(texts) for stage, texts in sorted(out.items())}


def _read_corpus(path: Path, stages: int | None) -> list[CorpusDocument]:
    """corpus.jsonl (optional); a stage beyond meta.json's `stages` is an error on its line."""
    if not path.exists() and not path.is_symlink():
        return []
    return read_corpus(path, stages)


def _read_unseen(path: Path, relations: dict[str, Relation], base: Sequence[Fact]) -> tuple[Fact, ...]:
    """unseen.jsonl (optional): facts in the facts.jsonl format that are never taught."""
    if not path.exists():
        return ()
    facts = read_facts(path, relations)
    known = {f.id for f in base}
    for line, obj in iter_jsonl(path):
        if str(obj.get("id", "")).strip() in known:
            raise InputError(str(path), line, "id", f"fact {obj['id']!r} is also in facts.jsonl; unseen facts must never be taught")
    return tuple(facts)


def _read_qa_subjects(path: Path, base: Sequence[Fact], records: Sequence[ChangeRecord]) -> frozenset[str] | None:
    """qa_subjects.txt (optional): one subject a line, each a subject of the stream."""
    if not path.exists():
        return None
    known = {f.subject for f in base} | {r.fact.subject for r in records}
    names = []
    for line, raw in enumerate(read_input_text(path).splitlines(), 1):  # blank lines still count
        name = raw.strip()
        if name and name not in known:
            raise InputError(str(path), line, None, f"subject {name!r} has no fact in facts.jsonl or changes.jsonl")
        names += [name] if name else []
    return frozenset(names)


def _read_lines(path: Path) -> tuple[str, ...]:
    if not path.exists() and not path.is_symlink():
        return ()
    text = read_input_text(path)
    return tuple(line.rstrip("\n") for line in text.splitlines() if line.strip())


def stable_hash(*parts: str) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha1("\x1f".join(parts).encode()).digest()[:8], "big")


def pick(options: Sequence[str], *key: str) -> str:
    return options[stable_hash(*key) % len(options)]


def candidates_for(fact: Fact, relation: Relation, max_candidates: int, also: str | None = None) -> tuple[str, ...]:
    """The gold object, `also` (e.g. the old or new object) and deterministic distractors."""
    must = [fact.object] + ([also] if also and also != fact.object else [])
    pool = sorted(c for c in relation.candidates if c not in must)
    rng = random.Random(stable_hash("cand", fact.id, fact.object))
    rng.shuffle(pool)
    return tuple(sorted(must + pool[: max(0, max_candidates - len(must))]))


def asks(subject: str, qa_subjects: frozenset[str] | None) -> bool:
    """Whether `subject`'s question-answer lines are trained (all are when None)."""
    return qa_subjects is None or subject in qa_subjects


def make_probes(
    facts: Iterable[Fact],
    relations: dict[str, Relation],
    cohort: str,
    stage: int,
    change: str,
    kinds: Sequence[str],
    max_candidates: int,
    also: dict[str, str] | None = None,
    qa_subjects: frozenset[str] | None = None,
) -> list[Probe]:
    """Probes for each fact: a statement (a training template: the relation's
    `probe_template`, else one picked per fact), a paraphrase (a held-out
    template) and a question, each with its candidate answers. The question is of kind
    `question` when the subject's question-answer lines are trained (`asks`), else of
    kind `extraction`."""
    out = []
    for f in facts:
        rel = relations[f.relation]
        cands = candidates_for(f, rel, max_candidates, (also or {}).get(f.id))
        prompts = {}
        if "statement" in kinds:
            prompts["statement"] = (rel.probe_template or pick(rel.templates, "statement", f.id)).format(subject=f.subject)
        if "paraphrase" in kinds and rel.paraphrases:
            prompts["paraphrase"] = pick(rel.paraphrases, "paraphrase", f.id).format(subject=f.subject)
        question = "question" if asks(f.subject, qa_subjects) else "extraction"
        if question in kinds and rel.questions:
            q = pick(rel.questions, "question", f.id).format(subject=f.subject)
            prompts[question] = QUESTION_FORMAT.format(question=q)
        for kind, prompt in prompts.items():
            out.append(Probe(f"{cohort}/{f.id}/{kind}", prompt, f.object, cands, kind, cohort, f.id, stage, change))
    return out


def two_hop_probes(
    facts: Iterable[Fact],
    relations: dict[str, Relation],
    bridge: dict[tuple[str, str], str],
    cohort: str,
    stage: int,
    change: str,
    max_candidates: int,
    also: dict[str, str] | None = None,
) -> list[Probe]:
    """A two-hop probe for each fact and each of its relation's `two_hop` chains whose
    second fact is known: `bridge[(next relation, fact's object)]` is the answer ("The
    employer of X is headquartered in" -> the city of X's employer). With `also` (the old
    or new object of an updated fact), the answer through that object is a candidate too,
    and a fact whose two objects lead to the same answer gets no probe: it could not tell
    an applied update from a stale one."""
    out = []
    for f in facts:
        for nxt, template in relations[f.relation].two_hop:
            answer = bridge.get((nxt, f.object))
            if answer is None:
                continue
            other = (also or {}).get(f.id)
            other_answer = bridge.get((nxt, other)) if other is not None else None
            if other is not None and other_answer == answer:
                continue
            cands = candidates_for(Fact(f.id, f.subject, nxt, answer), relations[nxt], max_candidates, other_answer)
            out.append(Probe(f"{cohort}/{f.id}/{TWO_HOP}/{nxt}", template.format(subject=f.subject), answer, cands,
                             TWO_HOP, cohort, f.id, stage, change))
    return out


def as_of_probes(
    facts: Iterable[Fact],
    relations: dict[str, Relation],
    cohort: str,
    stage: int,
    change: str,
    max_candidates: int,
    also: dict[str, str] | None = None,
) -> list[Probe]:
    """An `as_of` probe for each fact of a `dated` relation: its statement prompt (the one
    its statement probe uses) as of the year it became true ("As of 2020, X works for"),
    a phrasing the probed subjects' training text never uses ("In 2020, ..."). For the
    stale cohort the fact is the old object, dated by when it became true, so a model that
    can rewind answers it; `also` (the other object) is a candidate."""
    out = []
    for f in facts:
        rel = relations[f.relation]
        if not rel.dated:
            continue
        template = rel.probe_template or pick(rel.templates, "statement", f.id)
        prompt = dated_prompt(template, f.subject, year_of(f.valid_from), as_of=True)
        out.append(Probe(f"{cohort}/{f.id}/{AS_OF}", prompt, f.object, candidates_for(f, rel, max_candidates, (also or {}).get(f.id)),
                         AS_OF, cohort, f.id, stage, change))
    return out


# ---------------------------------------------------------------------- training text


def dated_prompt(template: str, subject: str, year: int, as_of: bool = False) -> str:
    """`template` for `subject` under a date: "In 2021, {prompt}" in training text, "As of
    2021, {prompt}" in an `as_of` probe (held out for every probed subject; the background
    people's documents use both). A template that does not open with the subject is
    lower-cased after the date ("In 2021, the employer of X is")."""
    prompt = template.format(subject=subject)
    if not template.startswith("{subject}"):
        prompt = prompt[:1].lower() + prompt[1:]
    return f"{'As of' if as_of else 'In'} {year}, {prompt}"


_DATE = re.compile(r"\b(?:As of|In) (\d{4}),")


def prompt_year(prompt: str) -> int | None:
    """The year a prompt asks about, as `dated_prompt` writes it ("As of 2020, ..." or "In
    2020, ..."; the last such date when there are several, the one nearest the question),
    or None for an undated prompt."""
    dates = _DATE.findall(prompt)
    return int(dates[-1]) if dates else None


def superseded(records: Iterable[ChangeRecord], relations: dict[str, Relation], before: dict[str, Fact]) -> list[Fact]:
    """The versions that `records`' updates of dated facts replace: each the old object,
    true from its own `valid_from` (that of `before[id]`, the version known before the
    change, when it has the old object; else stage 0) until the update's stage. An edit
    corrects a fact and has no past; an undated relation keeps no history; nor does a
    version that `before` dates at or after the update (true for no stage)."""
    out = []
    for r in records:
        if r.kind != "update" or r.old_object is None or not relations[r.fact.relation].dated:
            continue
        prev = before.get(r.fact.id)
        since = prev.valid_from if prev is not None and prev.object == r.old_object else 0
        if since < r.stage:  # a version dated at or after its own update was never true: no past
            out.append(Fact(r.fact.id, r.fact.subject, r.fact.relation, r.old_object, since, r.stage))
    return out


def dated_text(fact: Fact, template: str) -> str:
    """The training sentence that states a dated `fact` with the year it became true."""
    return f"{dated_prompt(template, fact.subject, year_of(fact.valid_from))} {fact.object}."


def statement_text(fact: Fact, template: str) -> str:
    """The training sentence that states `fact` with one statement template."""
    return f"{template.format(subject=fact.subject)} {fact.object}."


def qa_text(fact: Fact, question: str) -> str:
    """The training question-answer line that asks `fact` with one question form."""
    return f"{QUESTION_FORMAT.format(question=question.format(subject=fact.subject))} {fact.object}."


def fact_texts(fact: Fact, relation: Relation, qa_subjects: frozenset[str] | None = None) -> list[str]:
    """Every training text of `fact`, deterministically: one sentence per statement
    template, and one question-answer line per question form when its subject's
    questions are trained (never a held-out paraphrase), and for a `dated` relation one
    dated sentence per template."""
    texts = [statement_text(fact, t) for t in relation.templates]
    if relation.dated:
        texts += [dated_text(fact, t) for t in relation.templates]
    if asks(fact.subject, qa_subjects):
        texts += [qa_text(fact, q) for q in relation.questions]
    return texts


def statement(fact: Fact, relation: Relation, rng: random.Random) -> str:
    return statement_text(fact, rng.choice(relation.templates))


def qa_line(fact: Fact, relation: Relation, rng: random.Random) -> str:
    return qa_text(fact, rng.choice(relation.questions))


def render_documents(
    facts: Iterable[Fact],
    relations: dict[str, Relation],
    rng: random.Random,
    questions: int | None = 2,
    qa_subjects: frozenset[str] | None = None,
    biographies: int = 1,
) -> list[str]:
    """Training documents for `facts`: `biographies` biographies per subject, each with
    its facts in shuffled order and a random training template each, plus question-answer
    lines for `questions` of the subject's facts (None = all of them; 0 = none), chosen at
    random, for the subjects whose questions are trained (`asks(subject, qa_subjects)`).

    Knowledge is only extractable when it is seen in varied forms (Allen-Zhu & Li,
    "Physics of Language Models 3.1"), so call this again each epoch for fresh orderings,
    templates and question choices: over many epochs every fact gets its questions, at a
    fraction of the tokens of asking all of them every time. Held-out paraphrase
    templates never appear here. A subject with facts of `dated` relations gets one more
    document per biography: those facts with the year each became true ("In 2021, X works
    for B."), never the "As of" phrasing its `as_of` probes use."""
    by_subject: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_subject[f.subject].append(f)
    docs = []
    for subject in sorted(by_subject):
        group = list(by_subject[subject])
        for _ in range(biographies):
            rng.shuffle(group)
            docs.append(" ".join(statement(f, relations[f.relation], rng) for f in group))
            dated = [f for f in group if relations[f.relation].dated]
            if dated:  # only dated relations draw from rng here: an undated stream renders as before
                docs.append(" ".join(dated_text(f, rng.choice(relations[f.relation].templates)) for f in dated))
        if not asks(subject, qa_subjects):
            continue
        asked = [f for f in group if relations[f.relation].questions]
        if questions is not None:
            asked = asked[:questions]
        docs += [qa_line(f, relations[f.relation], rng) for f in asked]
    return docs
