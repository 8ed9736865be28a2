"""Facts, relations and probes, and the native JSONL formats with validation.

The formats are documented in docs/formats.md. Every reader validates as it goes and
raises `InputError` naming file, line and field; readers never write anything.
"""

from __future__ import annotations

import json
import os
import stat
import string
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ckl.core.errors import InputError

CHANGE_KINDS = ("learn", "update", "edit", "forget")
# A stage may also train on a domain corpus (corpus.jsonl): unlabeled documents, the stage
# kind of continual pre-training (CPT). Every kind a stage can hold, in canonical order:
CORPUS = "corpus"
STAGE_KINDS = (*CHANGE_KINDS, CORPUS)
# A corpus document is trained in packed blocks (split when longer) and its held-out share
# is scored in context-sized windows, so it may be far longer than a fact's text field; the
# cap only stops a whole book landing on one line by mistake.
MAX_CORPUS_CHARS = 100_000
MAX_STAGE = 10_000  # a stage number beyond this is a typo, not a plan (every stage up to it is materialised)
# statement: a training template; paraphrase: a held-out template; question: a question
# about a subject whose question-answer lines were trained; extraction: the same question
# form about a subject whose facts were only ever read as statements (Allen-Zhu & Li,
# "Physics of Language Models 3.1": knowledge extraction).
PROBE_KINDS = ("statement", "paraphrase", "question", "extraction")
# two_hop: a question through a second fact ("The employer of X is headquartered in"),
# made where a relation declares `two_hop` chains (a world built with `two_hop: true`);
# the answer is never trained for the probed subject, only its two single hops are
# (multi-hop knowledge questions, Zhong et al. 2023, "MQuAKE").
TWO_HOP = "two_hop"
# as_of: a statement prompt under a date ("As of 2020, {subject} works for"), made for the
# facts of a relation declared `dated` (a world built with `dated: true`): training text
# states such facts with the year they became true ("In 2021, ..."), never with "As of";
# the stale cohort's as_of probe asks for the old object as of its own year, so it is the
# target there (prompted knowledge cutoffs: "Can Prompts Rewind Time for LLMs?", 2025).
AS_OF = "as_of"
ALL_PROBE_KINDS = (*PROBE_KINDS, TWO_HOP, AS_OF)
# The year of stage 0 on a dated relation; a fact that became true at stage j is dated
# FIRST_YEAR + j (`year_of`).
FIRST_YEAR = 2020


def year_of(stage: int) -> int:
    """The year a dated fact that became true at `stage` is stated with."""
    return FIRST_YEAR + stage
# The longest text field (a subject, an object, a candidate, a template, an id) read from
# any input. Scoring lays every probe's prompt and candidates out in one row with a
# row-by-row attention mask, so one megabyte-long answer would ask for hundreds of GiB;
# refusing it when it is read costs nothing. The longest field of every dataset ckl
# imports (CounterFact, zsRE, KnowUnDo, the Pile targets) is under 350 characters.
MAX_TEXT_CHARS = 1000


@dataclass(frozen=True)
class Relation:
    """A relation and the text that expresses it.

    `templates` are statement prefixes used in training text ("{subject} was born in");
    `paraphrases` are held out of training and used only for paraphrase probes;
    `questions` are question forms ("Where was {subject} born?"); `candidates` are the
    objects used for candidate ranking. `probe_template`, one of `templates`, is the one
    statement probes use (an editing record's own prompt); None = one picked per fact.
    `two_hop` chains this relation to another: (next relation, template) pairs, each
    template a prompt about this relation's subject whose answer is the next relation's
    object for this relation's object ("The employer of {subject} is headquartered in").
    `dated`: its facts change over time and are also stated with the year they became true
    ("In 2021, {subject} works for B."; `year_of` their `valid_from`), and probed as of a
    year (kind `as_of`).
    """

    name: str
    templates: tuple[str, ...]
    paraphrases: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    probe_template: str | None = None
    two_hop: tuple[tuple[str, str], ...] = ()
    dated: bool = False


@dataclass(frozen=True)
class Fact:
    """(subject, relation, object) with an id; objects may be several tokens long."""

    id: str
    subject: str
    relation: str
    object: str
    valid_from: int = 0
    valid_until: int | None = None


@dataclass(frozen=True)
class ChangeRecord:
    """One line of a change file: at `stage`, `kind` happens to fact `fact.id`.

    For `update` and `edit`, `fact` carries the new object and `old_object` the one it
    replaces; for `forget`, `fact` is the fact to unlearn as currently known.
    """

    stage: int
    kind: str
    fact: Fact
    old_object: str | None = None


@dataclass(frozen=True)
class Probe:
    """A prompt, the expected answer, candidates to rank, and what it tests."""

    id: str
    prompt: str
    answer: str
    candidates: tuple[str, ...]
    kind: str  # statement | paraphrase | question | extraction | two_hop | as_of
    cohort: str  # invariant | stage1 | stale1 | forget1 | ...
    fact_id: str
    stage: int = 0  # the stage that created the cohort (0 for base knowledge)
    change: str = "base"  # learn | update | edit | forget | base
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


# ---------------------------------------------------------------------------- reading


def open_input(path: str | Path) -> BinaryIO:
    """Open a user's input file for reading (binary). A missing or unreadable file, a
    directory, a symlink loop, and anything that is not a regular file (a FIFO or a device,
    which could block forever or never end) are InputErrors naming the file."""
    where = str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(where, None, None, "file not found") from None
    except OSError as err:  # a symlink loop, a path through a file, no permission
        raise InputError(where, None, None, f"cannot read file: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InputError(where, None, None, "is a directory; expected a file")
    if not stat.S_ISREG(mode):
        raise InputError(where, None, None, "is not a regular file (a FIFO, socket or device); give a file")
    try:
        return open(path, "rb")
    except OSError as err:
        raise InputError(where, None, None, f"cannot read file: {err.strerror}") from None


def read_input_text(path: str | Path) -> str:
    """The whole of a user's text file (UTF-8; `open_input`'s checks first)."""
    with open_input(path) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(str(path), data[: err.start].count(b"\n") + 1, None, "not valid UTF-8") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


class _DuplicateKey(ValueError):
    pass


def parse_json(text: str, path: str, line: int | None) -> Any:
    """json.loads for user input: a key given twice in one object, a number beyond Python's
    4,300-digit limit and nesting too deep are InputErrors naming the file and line."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise InputError(path, line, str(err), "this key appears twice in one object; give it once") from None
    except json.JSONDecodeError as err:
        raise InputError(path, line if line is not None else err.lineno, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
    except ValueError:  # int() refused a literal of more than 4,300 digits
        raise InputError(path, line, None, "invalid JSON (a number with more than 4300 digits)") from None
    except RecursionError:
        raise InputError(path, line, None, "invalid JSON (nested too deeply)") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; bad JSON is an InputError."""
    handle = open_input(path)
    path = str(path)
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise InputError(path, number, None, "not valid UTF-8") from None
            if not line.strip():
                continue
            obj = parse_json(line, path, number)
            if not isinstance(obj, dict):
                raise InputError(path, number, None, f"expected a JSON object, got {type(obj).__name__}")
            try:  # an escaped lone surrogate ("\ud800") parses, but no UTF-8 file or database can hold it
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(path, number, None, "a string holds an unpaired surrogate escape (\\ud800-\\udfff)") from None
            yield number, obj


def text_field(obj: dict, key: str, path: str, line: int, required: bool = True) -> str | None:
    """The string at `key`, stripped; a missing (when required), empty or non-string value
    is an InputError naming the file, line and key."""
    value = obj.get(key)
    if value is None:
        if required:
            raise InputError(path, line, key, "missing required field")
        return None
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, key, f"must be a non-empty string, got {_short(value)}")
    check_text_length(value.strip(), path, line, key)
    return value.strip()


def check_text_length(text: str, path: str, line: int | None, key: str | None) -> None:
    """A text longer than MAX_TEXT_CHARS characters is an InputError naming where it is."""
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(path, line, key, f"is {len(text)} characters long; at most {MAX_TEXT_CHARS} are allowed (docs/formats.md)")


def _int(obj: dict, key: str, path: str, line: int, default: int | None, minimum: int = 0) -> int | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(path, line, key, f"must be an integer >= {minimum}, got {_short(value)}")
    if value > MAX_STAGE:  # a stage number: beyond this it is a typo, and SQLite cannot hold every integer
        raise InputError(path, line, key, f"must be at most {MAX_STAGE}, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def _texts(obj: dict, key: str, path: str, line: int, need_subject: bool, required: bool) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        if required:
            raise InputError(path, line, key, "missing required field")
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(path, line, key, "must be a list of non-empty strings")
    for v in value:
        check_text_length(v.strip(), path, line, key)
    if required and not value:
        raise InputError(path, line, key, "must not be empty")
    if need_subject:
        for v in value:
            if "{subject}" not in v:
                raise InputError(path, line, key, f"template {v!r} has no '{{subject}}' placeholder")
            if not template_fields_ok(v):  # templates are filled with str.format: nothing else may run
                raise InputError(path, line, key, f"template {v!r} may hold no braces but '{{subject}}' (write a literal brace as '{{{{' or '}}}}')")
    return tuple(v.strip() for v in value)


def template_fields_ok(template: str, fields: tuple[str, ...] = ("subject",)) -> bool:
    """Whether every format field of `template` is a plain `{name}` of `fields`: no
    attribute or index access (`{subject.__class__}`), conversion or format spec
    (`{subject:>1000000000}` would build a gigabyte string)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:  # a lone brace
        return False
    return all(name is None or (name in fields and not spec and conversion is None) for _, name, spec, conversion in parsed)


def read_relations(path: str | Path) -> dict[str, Relation]:
    """Read relations.jsonl: {name, templates, paraphrases?, questions?, candidates?,
    probe_template?, two_hop?, dated?}; two_hop is a list of {relation, template}, each
    naming a relation of the file; dated is true or false."""
    path = str(path)
    relations: dict[str, Relation] = {}
    chains: list[tuple[int, str]] = []  # (line, next relation): checked once every relation is read
    for line, obj in iter_jsonl(path):
        name = text_field(obj, "name", path, line)
        if name in relations:
            raise InputError(path, line, "name", f"duplicate relation {name!r}")
        templates = _texts(obj, "templates", path, line, True, True)
        probe = obj.get("probe_template")
        if probe is not None and (not isinstance(probe, str) or probe.strip() not in templates):
            raise InputError(path, line, "probe_template", f"must be one of the relation's templates, got {probe!r}")
        relations[name] = Relation(
            name=name,
            templates=templates,
            paraphrases=_texts(obj, "paraphrases", path, line, True, False),
            questions=_texts(obj, "questions", path, line, True, False),
            candidates=_texts(obj, "candidates", path, line, False, False),
            probe_template=probe.strip() if probe is not None else None,
            two_hop=_two_hop(obj, path, line),
            dated=_flag(obj, "dated", path, line),
        )
        chains += [(line, nxt) for nxt, _ in relations[name].two_hop]
    if not relations:
        raise InputError(path, None, None, "no relations in file")
    for line, nxt in chains:
        if nxt not in relations:
            raise InputError(path, line, "two_hop", f"unknown relation {nxt!r} (known: {', '.join(sorted(relations))})")
    return relations


def _flag(obj: dict, key: str, path: str, line: int) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise InputError(path, line, key, f"must be true or false, got {_short(value)}")
    return value


def _two_hop(obj: dict, path: str, line: int) -> tuple[tuple[str, str], ...]:
    value = obj.get("two_hop", [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InputError(path, line, "two_hop", "must be a list of {relation, template} objects")
    out = []
    for v in value:
        unknown = sorted(set(v) - {"relation", "template"})
        if unknown:
            raise InputError(path, line, "two_hop", f"unknown field {unknown[0]!r} (known: relation, template)")
        for key in ("relation", "template"):
            if not isinstance(v.get(key), str) or not v[key].strip():
                raise InputError(path, line, "two_hop", f"{key}: missing required field" if key not in v else f"{key}: must be a non-empty string, got {_short(v[key])}")
            check_text_length(v[key].strip(), path, line, "two_hop")
        nxt, template = v["relation"].strip(), v["template"].strip()
        if "{subject}" not in template or not template_fields_ok(template):
            raise InputError(path, line, "two_hop", f"template {template!r} must hold '{{subject}}' and no other braces")
        out.append((nxt, template))
    if len({nxt for nxt, _ in out}) < len(out):
        raise InputError(path, line, "two_hop", "names a next relation twice")
    return tuple(out)


def _fact(obj: dict, path: str, line: int, relations: dict[str, Relation]) -> Fact:
    fid = text_field(obj, "id", path, line)
    relation = text_field(obj, "relation", path, line)
    if relation not in relations:
        known = ", ".join(sorted(relations))
        raise InputError(path, line, "relation", f"unknown relation {relation!r} (known: {known})")
    valid_from = _int(obj, "valid_from", path, line, 0)
    valid_until = _int(obj, "valid_until", path, line, None)
    if valid_until is not None and valid_until <= valid_from:
        raise InputError(path, line, "valid_until", f"must be after valid_from ({valid_from}), got {valid_until}")
    return Fact(fid, text_field(obj, "subject", path, line), relation, text_field(obj, "object", path, line), valid_from, valid_until)


def read_facts(path: str | Path, relations: dict[str, Relation]) -> list[Fact]:
    """Read facts.jsonl: {id, subject, relation, object, valid_from?, valid_until?}."""
    path = str(path)
    facts: list[Fact] = []
    seen: dict[str, int] = {}
    for line, obj in iter_jsonl(path):
        fact = _fact(obj, path, line, relations)
        if fact.id in seen:
            raise InputError(path, line, "id", f"duplicate id {fact.id!r} (first on line {seen[fact.id]})")
        seen[fact.id] = line
        facts.append(fact)
    return facts


def read_changes(path: str | Path, base: Iterable[Fact], relations: dict[str, Relation]) -> list[ChangeRecord]:
    """Read changes.jsonl against the base facts, checking every reference.

    Lines: {stage, kind: learn, id, subject, relation, object} |
    {stage, kind: update|edit, id, object} | {stage, kind: forget, id}.
    Stages must not decrease from one line to the next.
    """
    path = str(path)
    current: dict[str, Fact] = {f.id: f for f in base}
    gone: set[str] = set()
    records: list[ChangeRecord] = []
    last_stage = 1
    touched: dict[tuple[int, str], int] = {}
    for line, obj in iter_jsonl(path):
        stage = _int(obj, "stage", path, line, None, minimum=1)
        if stage is None:
            raise InputError(path, line, "stage", "missing required field")
        if stage > MAX_STAGE:
            raise InputError(path, line, "stage", f"must be at most {MAX_STAGE}, got {stage}")
        if stage < last_stage:
            raise InputError(path, line, "stage", f"stages must not decrease (got {stage} after {last_stage})")
        last_stage = stage
        kind = text_field(obj, "kind", path, line)
        if kind not in CHANGE_KINDS:
            raise InputError(path, line, "kind", f"must be one of {', '.join(CHANGE_KINDS)}, got {kind!r}")
        fid = text_field(obj, "id", path, line)
        key = (stage, fid)
        if key in touched:
            raise InputError(path, line, "id", f"fact {fid!r} already changed in stage {stage} (line {touched[key]})")
        touched[key] = line
        if kind == "learn":
            if fid in current or fid in gone:
                raise InputError(path, line, "id", f"duplicate id {fid!r}: learn needs a new fact id")
            fact = _fact(obj, path, line, relations)
            fact = Fact(fact.id, fact.subject, fact.relation, fact.object, stage, None)
            current[fid] = fact
            records.append(ChangeRecord(stage, kind, fact))
            continue
        if fid in gone:
            raise InputError(path, line, "id", f"fact {fid!r} was already forgotten")
        if fid not in current:
            raise InputError(path, line, "id", f"unknown fact id {fid!r}")
        old = current[fid]
        for key_name in ("subject", "relation"):
            given = obj.get(key_name)
            if isinstance(given, str):
                given = given.strip()
            if given is not None and given != getattr(old, key_name):
                raise InputError(path, line, key_name, f"{given!r} does not match fact {fid!r} ({getattr(old, key_name)!r})")
        if kind == "forget":
            gone.add(fid)
            del current[fid]
            records.append(ChangeRecord(stage, kind, old))
            continue
        new_object = text_field(obj, "object", path, line)
        if new_object == old.object:
            raise InputError(path, line, "object", f"new object equals the current one ({new_object!r})")
        fact = Fact(fid, old.subject, old.relation, new_object, stage, None)
        current[fid] = fact
        records.append(ChangeRecord(stage, kind, fact, old_object=old.object))
    return records


@dataclass(frozen=True)
class CorpusDocument:
    """One line of corpus.jsonl: a document of stage `stage`'s domain corpus, trained on
    in that stage, or (`heldout`) kept out of training to measure the domain's perplexity."""

    stage: int
    text: str
    heldout: bool = False


def read_corpus(path: str | Path, stages: int | None = None) -> list[CorpusDocument]:
    """Read corpus.jsonl: {stage, text, heldout?}, stages >= 1 in any order; with `stages`
    (the stream's stage count), a stage beyond it is an error on its line."""
    path = str(path)
    docs: list[CorpusDocument] = []
    for line, obj in iter_jsonl(path):
        for key in obj:
            if key not in ("stage", "text", "heldout"):
                raise InputError(path, line, key, "unknown field (known: heldout, stage, text)")
        stage = _int(obj, "stage", path, line, None, minimum=1)
        if stage is None:
            raise InputError(path, line, "stage", "missing required field")
        if stages is not None and stage > stages:
            raise InputError(path, line, "stage", f"stage {stage} is beyond the stream's {stages} stage(s) (meta.json)")
        text = obj.get("text")
        if text is None:
            raise InputError(path, line, "text", "missing required field")
        if not isinstance(text, str) or not text.strip():
            raise InputError(path, line, "text", f"must be a non-empty string, got {_short(text)}")
        if len(text) > MAX_CORPUS_CHARS:
            raise InputError(path, line, "text", f"is {len(text)} characters long; at most {MAX_CORPUS_CHARS} are allowed (split the document)")
        heldout = obj.get("heldout", False)
        if not isinstance(heldout, bool):
            raise InputError(path, line, "heldout", f"must be true or false, got {_short(heldout)}")
        docs.append(CorpusDocument(stage, text.strip(), heldout))
    return docs


# ---------------------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see either the old or the whole new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def relation_row(r: Relation) -> dict[str, Any]:
    row = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(r).items() if v is not None and k not in ("two_hop", "dated")}
    if r.two_hop:  # absent when empty: a relation without chains writes what it always wrote
        row["two_hop"] = [{"relation": nxt, "template": template} for nxt, template in r.two_hop]
    if r.dated:  # likewise absent when false
        row["dated"] = True
    return row


def fact_row(f: Fact) -> dict[str, Any]:
    row = asdict(f)
    if row["valid_until"] is None:
        del row["valid_until"]
    return row


def corpus_row(d: CorpusDocument) -> dict[str, Any]:
    return {"stage": d.stage, "text": d.text, **({"heldout": True} if d.heldout else {})}


def change_row(c: ChangeRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": c.stage, "kind": c.kind, "id": c.fact.id}
    if c.kind == "learn":
        row.update(subject=c.fact.subject, relation=c.fact.relation, object=c.fact.object)
    elif c.kind in ("update", "edit"):
        row.update(object=c.fact.object)
    return row
