"""Editing benchmark records -> a ckl Stream: the sequential-editing-at-scale scenario.

CounterFact and zsRE records (ckl.data.formats.counterfact, ckl.data.formats.zsre) are parsed into
`EditCase`s, then `edit_stream` builds one stream from them:

- Base knowledge K0 is every case's true fact (`prompt` + `truth`) and its neighbourhood
  fact (`neighbour_prompt` + `neighbour_truth`). A model trained from scratch does not know
  these facts, so the base model is first taught K0 (a contamination-free protocol).
- Stage j edits cases (j-1)*batch+1 .. j*batch to their new targets (`ChangeRecord` kind
  "edit", old object = the true target). An N-stage stream is sequential editing at scale:
  the runner scores after every batch the current edits (cohort stageJ), all earlier
  edits, and the knowledge left untouched.
- Cases after the first `edits` are never edited: their facts stay in the `invariant`
  cohort (retention of everything else).

**Several forms per fact (`forms=True`, the default).** The records carry no relation id.
If every record were its own relation with one trained sentence, a model would key each
answer on that record's unique sentence, not on the subject, and no subject-keyed editor
(ROME, MEMIT) could reach it. So records whose prompts share a template once the subject
is removed ("{subject} plays") form one group, and a neighbourhood prompt that is a known
template filled with another subject ("Shaquille O'Neal plays") joins its record's group
to that template's (CounterFact's neighbourhood prompts are the same relation by
construction); the groups are the connected components. Every fact is then taught with
every template of its group (its own first) and with one question per template
("Question: {subject} plays what? Answer:"; zsRE's prompts are questions already), so the
subject carries the fact; where a subject has more than one fact in a group, its facts
keep their own template only (they would contradict each other). The record's own prompt
stays the statement probe (`Relation.probe_template`) and its rephrased prompt the
held-out paraphrase, never trained: where the rephrased prompt is another record's
template of the same group (15 of CounterFact's first 1,000 records), that template is
left out of this record's forms (`ckl check` refuses a paraphrase that is a training
template). `forms=False` is the earlier one-sentence-per-record
stream.

**New targets the model can produce (`taught_targets=True`, the default).** An editor
can only make a model say an object it has learned to say after such a prompt: in a
50-edit CounterFact stream 37 of 50 new targets were never an answer the base model was
taught, and both ROME implementations (ckl's and the authors') scored 0 of 37 on them.
So a new target that is not the true object of some K0 fact in its record's group is
replaced by one that is, drawn with a seeded generator (never the record's true object);
`meta["retargeted"]` maps each such case id to its original target. Groups with a single
taught object draw from all K0 objects.

Each case keeps its own relation (named by its id) carrying those forms, so its
candidates stay [truth, new target] and candidate ranking on the statement, paraphrase
and neighbourhood probes is exactly CounterFact's ES, PS and NS comparison P(new) vs
P(true). A neighbourhood prompt that matches no template (all of zsRE's: they are
unrelated Natural Questions) is the whole "subject" of a one-template relation
"{subject}"; `meta["neighbours"]` maps each neighbourhood fact to its case, and
`Stream.probes` puts the neighbourhood facts of the cases edited in stage j in cohort
`localJ`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ckl.core.errors import InputError
from ckl.data.facts import ChangeRecord, Fact, Relation
from ckl.data.formats.registry import Importer, register_importer
from ckl.data.stream import Stream, group_stages


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


QUESTION_WORDS = ("what", "who", "which", "where", "when", "how", "why", "whom", "whose", "in what", "to what")


def question_form(template_text: str) -> str:
    """A question for a template: itself when it already asks one (zsRE), else the
    statement followed by "what?" ("{subject} plays" -> "{subject} plays what?")."""
    text = template_text.rstrip()
    if text.endswith("?") or text.lower().startswith(QUESTION_WORDS):
        return text if text.endswith("?") else text + "?"
    return text.rstrip(",.:;") + " what?"


def _split(template_text: str) -> tuple[str, str]:
    head, tail = template_text.split("{subject}", 1)
    return head.replace("{{", "{").replace("}}", "}"), tail.replace("{{", "{").replace("}}", "}")


def match_template(prompt: str, templates: Sequence[str]) -> tuple[str, str] | None:
    """(template, subject) for the most specific template (longest fixed text) that,
    filled with some non-empty subject, is exactly `prompt`; None when none is."""
    best = None
    for t in templates:
        head, tail = _split(t)
        if len(prompt) > len(head) + len(tail) and prompt.startswith(head) and prompt.endswith(tail):
            subject = prompt[len(head) : len(prompt) - len(tail)]
            if subject.strip() == subject and (best is None or len(head) + len(tail) > best[0]):
                best = (len(head) + len(tail), t, subject)
    return None if best is None else (best[1], best[2])


class _Groups:
    """Union-find over template strings (a hand-written dozen lines: no library needed)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def edit_stream(
    cases: Sequence[EditCase],
    source: str,
    edits: int | None = None,
    batch: int = 100,
    untouched: int = 0,
    forms: bool = True,
    taught_targets: bool = True,
    seed: int = 0,
) -> Stream:
    """Build the editing stream: the first `edits` cases (all by default) edited in stages
    of `batch`, the next `untouched` cases kept true; `forms` and `taught_targets` as in
    the module docstring; `seed` draws the replacement targets.

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
    used = list(cases[: edits + untouched])
    own = [template(c.prompt, c.subject) for c in used]
    known = sorted(set(own))
    groups = _Groups()
    for t in known:
        groups.find(t)
    neighbour_match: list[tuple[str, str] | None] = []
    for case, t in zip(used, own):
        match = match_template(case.neighbour_prompt, known) if forms and case.neighbour_prompt and case.neighbour_truth else None
        neighbour_match.append(match)
        if match:
            groups.union(t, match[0])
    members: dict[str, list[str]] = {}
    for t in known:
        members.setdefault(groups.find(t), []).append(t)
    # (subject, group) -> facts: a subject with several facts in one group keeps its own template only
    count: dict[tuple[str, str], int] = {}
    for case, t, match in zip(used, own, neighbour_match):
        count[(case.subject, groups.find(t))] = count.get((case.subject, groups.find(t)), 0) + 1
        if match:
            count[(match[1], groups.find(t))] = count.get((match[1], groups.find(t)), 0) + 1

    def forms_of(t: str, subject: str) -> tuple[str, ...]:
        root = groups.find(t)
        if not forms or count.get((subject, root), 0) > 1:
            return (t,)
        return (t,) + tuple(x for x in members[root] if x != t)

    taught: dict[str, set[str]] = {}
    for case, t, match in zip(used, own, neighbour_match):
        taught.setdefault(groups.find(t), set()).add(case.truth)
        if match:
            taught[groups.find(t)].add(case.neighbour_truth)
    everything = sorted(set().union(*taught.values()))
    rng = random.Random(f"ckl.edits/{seed}")
    relations: dict[str, Relation] = {}
    base: list[Fact] = []
    records: list[ChangeRecord] = []
    neighbours: dict[str, str] = {}
    retargeted: dict[str, str] = {}
    for i, (case, t, match) in enumerate(zip(used, own, neighbour_match)):
        target = case.target_new
        if taught_targets and i < edits:
            pool = sorted(taught[groups.find(t)] - {case.truth}) or sorted(set(everything) - {case.truth})
            if target not in pool and pool:
                target = rng.choice(pool)
                retargeted[case.id] = case.target_new
        rel = case.id
        templates = forms_of(t, case.subject)
        paraphrase = template(case.paraphrase, case.subject) if case.paraphrase else None
        if paraphrase in templates:  # another record's prompt: held out for this one, or no paraphrase if it is its own
            templates = tuple(x for x in templates if x != paraphrase) if paraphrase != t else templates
            paraphrase = None if paraphrase == t else paraphrase
        relations[rel] = Relation(
            name=rel,
            templates=templates,
            paraphrases=(paraphrase,) if paraphrase else (),
            questions=tuple(question_form(x) for x in templates) if forms else (),
            candidates=(case.truth, target),
            probe_template=t if forms else None,
        )
        base.append(Fact(case.id, case.subject, rel, case.truth))
        if case.neighbour_prompt and case.neighbour_truth:
            nrel, nid = f"{case.id}/neighbour", f"{case.id}/neighbour"
            candidates = (case.neighbour_truth,) + ((target,) if target != case.neighbour_truth else ())
            if match:
                ntemplates = forms_of(match[0], match[1])
                relations[nrel] = Relation(name=nrel, templates=ntemplates, questions=tuple(question_form(x) for x in ntemplates),
                                           candidates=candidates, probe_template=match[0])
                base.append(Fact(nid, match[1], nrel, case.neighbour_truth))
            else:
                relations[nrel] = Relation(name=nrel, templates=("{subject}",), candidates=candidates)
                base.append(Fact(nid, case.neighbour_prompt, nrel, case.neighbour_truth))
            neighbours[nid] = case.id
        if i < edits:
            stage = i // batch + 1
            new = Fact(case.id, case.subject, rel, target, stage, None)
            records.append(ChangeRecord(stage, "edit", new, old_object=case.truth))
    meta = {"source": source, "edits": edits, "batch": batch, "untouched": untouched, "neighbours": neighbours,
            "forms": forms, "taught_targets": taught_targets, "seed": seed, "retargeted": retargeted,
            "groups": len({groups.find(t) for t in own})}
    return Stream(relations=relations, base=tuple(base), stages=group_stages(records), meta=meta)


@dataclass
class EditImportOptions:
    """`ckl import counterfact|zsre` options (ckl.data.formats.registry)."""

    edits: int | None = field(default=None, metadata={"help": "records to edit (default: all but --untouched)"})
    batch: int = field(default=100, metadata={"help": "edits per stage (the sequential batch)"})
    untouched: int = field(default=0, metadata={"help": "further records kept true (retention of everything else)"})
    single_form: bool = field(default=False, metadata={"help": "teach each fact only in its record's own prompt (the earlier stream; subject-keyed editors cannot reach it)"})
    keep_targets: bool = field(default=False, metadata={"help": "keep every record's new target, even one the base model is never taught to produce"})
    seed: int = field(default=0, metadata={"help": "seed for the replacement targets"})


def describe_edits(stream: Stream, options: EditImportOptions) -> str:
    """What `ckl import counterfact|zsre` prints after writing a stream."""
    meta = stream.meta
    lines = [f"{len(stream.base)} true facts to teach, {meta['edits']} edits in {stream.T} batch(es) of {options.batch}, "
             f"{options.untouched} records untouched"]
    if not options.single_form:
        lines.append(f"  facts taught in the forms of {meta['groups']} template group(s)")
    if not options.keep_targets:
        lines.append(f"  {len(meta['retargeted'])} new target(s) replaced by objects the base model is taught (meta.json: retargeted)")
    return "\n".join(lines)


def register_edit_importer(name: str, label: str, build: Callable[..., Stream], sample: Callable[[Path], Path]) -> None:
    """Register an editing format (CounterFact, zsRE): the shared options, loader and
    message around its `build(path, edits=, batch=, untouched=, forms=, taught_targets=, seed=)`."""
    def load(path: Path, o: EditImportOptions) -> Stream:
        return build(path, edits=o.edits, batch=o.batch, untouched=o.untouched,
                     forms=not o.single_form, taught_targets=not o.keep_targets, seed=o.seed)

    load.__qualname__ = f"load_{name}"  # the registry tells importers apart by their loader
    register_importer(Importer(
        name, EditImportOptions, load, f"{label} -> an editing stream: true facts taught first, then edited in batches.",
        "FILE", f"{label}'s JSON file", sample, describe_edits,
    ))

