"""KnowUnDo privacy (Tian et al. 2024, "To Forget or Not? Towards Practical Knowledge
Unlearning for Large Language Models") -> a ckl Stream of deletion requests.

Input: a directory with `full.json`, `unlearn_train.json`, `unlearn_val.json`,
`retention_train.json`, `retention_val.json`; each a JSON list of {text (a question),
labels (its answer)} about fictitious people. `full.json` is the union of the four splits.

The scenario (the dataset's own protocol, on a model trained from scratch): the base
model is taught every record of `full.json` (K0); the stages then ask to forget the
`unlearn_*` records while the `retention_*` records, about the same people, must stay.

Representation: each record is a fact (person, question form, answer). The person is
found by name in the question (the names are those of the dataset's "Who is X?"
questions); the relation is the question with the name replaced by "{subject}", so all
of a person's records share a subject and the forgetting boundary (ckl.data.stream.boundary)
is exactly "the same people's other facts". A question that names nobody becomes a text
target (ckl.data.formats.text_targets). The answer's final punctuation is dropped (the
training renderer adds a period back; `trim_end`).

Deviation: KnowUnDo scores answers with ROUGE and an entailment model; ckl uses greedy
exact match of the whole answer and token-level memorisation accuracy and extraction
likelihood (ckl.evaluate.unlearning).
"""

from __future__ import annotations

import json

import re
from dataclasses import dataclass, field
from pathlib import Path

from ckl.core.errors import InputError
from ckl.data.facts import Fact, Relation
from ckl.data.formats.json_list import iter_json_list, text_field
from ckl.data.formats.text_targets import TEXT_RELATION, text_fact, trim_end
from ckl.data.formats.registry import Importer, describe_deletions, register_importer
from ckl.data.stream import Change, Stream

SPLITS = ("unlearn_train", "unlearn_val", "retention_train", "retention_val")
_WHO = re.compile(r"^Who is ([^?]+)\?$")


@dataclass
class KnowUndoConfig:
    """Which part of KnowUnDo privacy to use and how the deletion requests arrive."""

    people: int = field(default=0, metadata={"help": "keep the first N people (in file order) and their records; 0 = all"})
    unseen_people: int = field(default=0, metadata={"help": "of those, hold out the last N people entirely: never taught, the never-seen floor"})
    stages: int = field(default=1, metadata={"help": "split the unlearn_* requests into this many stages (streaming deletion)"})
    val: bool = field(default=True, metadata={"help": "also use the *_val splits (False: only *_train; val records are then taught and kept)"})

    def __post_init__(self) -> None:
        for name in ("people", "unseen_people"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"stages must be an integer >= 1, got {self.stages!r}")
        if self.people and self.unseen_people >= self.people:
            raise ValueError(f"unseen_people ({self.unseen_people}) must be < people ({self.people})")


@dataclass(frozen=True)
class _Record:
    number: int
    question: str
    answer: str


def _read(path: Path) -> list[tuple[_Record, int]]:
    out = []
    for number, line, obj in iter_json_list(path):
        question = text_field(obj, "text", str(path), number, line)
        answer = text_field(obj, "labels", str(path), number, line)
        out.append((_Record(number, question, answer), line))
    return out


def _person(question: str, names: list[str]) -> str | None:
    hits = [n for n in names if n in question]
    return max(hits, key=len) if hits else None


def load_knowundo(directory: str | Path, config: KnowUndoConfig | None = None) -> Stream:
    """Read KnowUnDo privacy files into a Stream (K0 = every record, stages = forget).

    Raises:
        InputError: a file is missing or malformed, a question repeats in full.json, or
            a split record's question is not in full.json (file, line and record named).
    """
    config = config or KnowUndoConfig()
    d = Path(directory)
    full = _read(d / "full.json")
    by_question: dict[str, _Record] = {}
    for record, line in full:
        if record.question in by_question:
            raise InputError(str(d / "full.json"), line, "text",
                             f"record {record.number}: question repeats record {by_question[record.question].number}")
        by_question[record.question] = record
    to_forget: set[str] = set()
    for split in SPLITS:
        path = d / f"{split}.json"
        for record, line in _read(path):
            if record.question not in by_question:
                raise InputError(str(path), line, "text", f"record {record.number}: question not found in full.json")
            if split.startswith("unlearn") and (config.val or split.endswith("train")):
                to_forget.add(record.question)

    names = sorted({m.group(1) for r, _ in full if (m := _WHO.match(r.question)) and "'s" not in m.group(1)})
    relations: dict[str, Relation] = {}
    groups: dict[str, list[tuple[Fact, bool]]] = {}  # person (or lone question) -> facts, forget?
    for record, _ in full:
        fid = f"knowundo-{record.number:04d}"
        answer = trim_end(record.answer)
        person = _person(record.question, names)
        if person is None:
            relations[TEXT_RELATION.name] = TEXT_RELATION
            fact, key = text_fact(fid, record.question, answer), record.question
        else:
            template = record.question.replace(person, "{subject}")
            relations.setdefault(template, Relation(template, templates=(template,)))
            fact, key = Fact(fid, person, template, answer), person
        groups.setdefault(key, []).append((fact, record.question in to_forget))

    order = list(groups)
    if config.people:
        if config.people > len(order):
            raise InputError(str(d), None, "people", f"asked for {config.people} people, the files have {len(order)}")
        order = order[: config.people]
    taught = order[: len(order) - config.unseen_people]
    unseen = order[len(order) - config.unseen_people:]
    base = [f for key in taught for f, _ in groups[key]]
    forget = [f for key in taught for f, gone in groups[key] if gone]
    if len(forget) < config.stages:
        raise InputError(str(d), None, "stages", f"{len(forget)} unlearn records cannot fill {config.stages} stages")
    per = -(-len(forget) // config.stages)
    stages = tuple(Change(stage=j + 1, forget=tuple(forget[j * per:(j + 1) * per])) for j in range(config.stages))
    used = {f.relation for f in base} | {f.relation for key in unseen for f, _ in groups[key]}
    return Stream(
        relations={name: r for name, r in relations.items() if name in used},
        base=tuple(base),
        stages=tuple(s for s in stages if s.forget),
        unseen=tuple(f for key in unseen for f, _ in groups[key]),
        meta={"scenario": "knowundo_privacy", "source": str(d), "people": len(taught), "unseen_people": len(unseen),
              "facts": len(base), "forget": len(forget)},
    )


def _sample(directory: Path) -> Path:
    """A KnowUnDo privacy folder of three people, in the dataset's form (the importer
    contract's input): every record in full.json, one per person to unlearn."""
    d = Path(directory) / "knowundo"
    d.mkdir(parents=True, exist_ok=True)
    people = ("Alda Venmore", "Bren Caldwick", "Corin Dorley")
    records = [
        [{"text": f"Who is {p}?", "labels": f"{p} is a baker."}, {"text": f"Where was {p} born?", "labels": "Brennick."},
         {"text": f"What is the phone number of {p}?", "labels": f"555-010{i}."}]
        for i, p in enumerate(people)
    ]
    full = [r for person in records for r in person]
    splits = {"unlearn_train": [person[2] for person in records[:2]], "unlearn_val": [records[2][2]],
              "retention_train": [person[1] for person in records], "retention_val": []}
    (d / "full.json").write_text(json.dumps(full, indent=1))
    for split, rows in splits.items():
        (d / f"{split}.json").write_text(json.dumps(rows, indent=1))
    return d


register_importer(Importer(
    "knowundo", KnowUndoConfig, lambda path, o: load_knowundo(path, o),
    "KnowUnDo privacy -> an unlearning stream (teach all, forget unlearn_*).",
    "DIR", "the KnowUnDo privacy folder (full.json, unlearn_*.json, retention_*.json)", _sample, describe_deletions,
))
