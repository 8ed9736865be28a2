"""The stream checker (`ckl check`): what loading a stream lets through but makes results
wrong, each named with its file, line and what it breaks.

Loading (`Stream.load`) refuses what cannot be read: bad JSON, missing fields, unknown
relations or fact ids, stages out of order. A stream can load and still measure nonsense;
these rules catch that, and `ckl run`, `ckl pretrain` and `ckl update` apply them first
(errors stop with exit code 2 before anything is written; warnings print):

errors (the numbers would be wrong):
- a key that misspells a known one (`paraphrase` for `paraphrases`: the relation would
  get no paraphrase probes, silently);
- two facts with the same subject and relation but different objects at the same time
  (in facts.jsonl, or a `learn` of a (subject, relation) the stream already holds: the
  model is taught both, and the probes of one contradict the other; change an object with
  an `update`);
- a held-out paraphrase identical to a training template of its relation (the
  "held-out" probe is then a trained sentence);
- held-out general text that also appears in the training text (held-out perplexity
  would measure memorised lines);
- meta.json's `stages` smaller than the last stage in changes.jsonl.

warnings (worth a look, not always wrong):
- any other unknown key (ignored by ckl);
- a relation without candidates: its probes rank the gold answer alone, so the `rank`
  metric is 1.0 whatever the model knows (`ckl run` with `eval.metric: rank` makes this
  an error);
- a candidate or object that is a word-prefix of another of the same relation ("Port" and
  "Port Ellis"): a summed log-probability never ranks a candidate above its own prefix,
  so the rank metric cannot pick the longer one;
- an object holding a stop token ("St. Ives": a token that starts with punctuation):
  ckl's exact match still scores it, but generated-text tools (lm-eval-harness, ckl's
  `reference_score`) cut the answer there and never match;
- meta.json's `stages` larger than the last stage with changes (trailing stages change
  nothing; fine when intended).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ckl.core.checks import closest
from ckl.core.errors import InputError
from ckl.data.facts import ChangeRecord, Fact, Relation, iter_jsonl, parse_json, read_input_text

RELATION_KEYS = ("name", "templates", "paraphrases", "questions", "candidates", "probe_template")
FACT_KEYS = ("id", "subject", "relation", "object", "valid_from", "valid_until")
CHANGE_KEYS = ("stage", "kind", "id", "subject", "relation", "object", "old_object", "valid_from", "valid_until")
META_KEYS = ("stages", "meta")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    file: str
    line: int | None
    field: str | None
    message: str

    def error(self) -> InputError:
        return InputError(self.file, self.line, self.field, self.message)

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "") + (f": field {self.field!r}" if self.field else "")
        return f"{where}: {self.severity}: {self.message}"


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def raise_errors(findings: Sequence[Finding]) -> None:
    """One InputError naming every error of `findings` (nothing when there is none)."""
    bad = errors(findings)
    if bad:
        raise InputError.of([f.error() for f in bad])


# ------------------------------------------------------------------ single rules


def unknown_keys(path: str | Path, known: Sequence[str]) -> list[Finding]:
    """Keys of each JSONL line that ckl does not read: an error when it misspells a known
    key, a warning otherwise."""
    path = str(path)
    out = []
    for line, obj in iter_jsonl(path):
        for key in obj:
            if key in known:
                continue
            near = closest(key, known, cutoff=0.75)
            if near is not None and near not in obj:
                out.append(Finding("error", path, line, key, f"unknown key; did you mean {near!r}? (as written, ckl ignores it)"))
            else:
                out.append(Finding("warning", path, line, key, f"unknown key, ignored (known: {', '.join(known)})"))
    return out


def _lines(path: str | Path, key: str) -> dict[str, int]:
    """Line of each `key` value of a JSONL file (first occurrence)."""
    found: dict[str, int] = {}
    for line, obj in iter_jsonl(path):
        value = obj.get(key)
        if isinstance(value, str):
            found.setdefault(value.strip(), line)
    return found


def _words(text: str) -> list[str]:
    return text.split()


def _stop_token(text: str) -> str | None:
    """The first token of `text` that starts with punctuation, the way the word-level
    tokenizer splits (runs of letters and digits, or of other non-space characters)."""
    import re

    for token in re.findall(r"\w+|[^\w\s]+", text):
        if not token[0].isalnum():
            return token
    return None


def relation_findings(path: str | Path, relations: dict[str, Relation], objects: dict[str, set[str]], rank_metric: bool = False) -> list[Finding]:
    """Paraphrases that are training templates, relations without candidates, word-prefix
    pairs among a relation's candidates and objects. `objects`: relation -> objects used."""
    path = str(path)
    line_of = _lines(path, "name")
    out = []
    bare: list[str] = []
    for name, rel in relations.items():
        line = line_of.get(name)
        templates = {" ".join(t.split()) for t in rel.templates}
        for p in rel.paraphrases:
            if " ".join(p.split()) in templates:
                out.append(Finding("error", path, line, "paraphrases", f"{p!r} is also a training template of {name!r}: its paraphrase probe tests a trained sentence, not a held-out one"))
        if not rel.candidates:
            bare.append(name)
        values = sorted(set(rel.candidates) | objects.get(name, set()))
        by_words = {tuple(_words(v)): v for v in values}
        for v in values:
            w = _words(v)
            for k in range(1, len(w)):
                shorter = by_words.get(tuple(w[:k]))
                if shorter is not None:
                    out.append(Finding("warning", path, line, "candidates",
                                       f"{shorter!r} is a word-prefix of {v!r} (relation {name!r}): a summed log-probability never ranks {v!r} above {shorter!r}, so the rank metric cannot pick it"))
                    break
    if bare:  # one finding per file: imported question sets can have hundreds
        shown = ", ".join(repr(n) for n in bare[:3]) + (", ..." if len(bare) > 3 else "")
        out.append(Finding("error" if rank_metric else "warning", path, line_of.get(bare[0]), "candidates",
                           f"{len(bare)} relation(s) have no candidates ({shown}): their probes rank the gold answer alone, "
                           "so the rank metric is 1.0 for them whatever the model knows"))
    return out


def fact_findings(path: str | Path, facts: Sequence[Fact]) -> list[Finding]:
    """Two facts with one subject and relation but different objects; objects with a stop token."""
    path = str(path)
    line_of = _lines(path, "id")
    out = []
    held: dict[tuple[str, str], Fact] = {}
    for f in facts:
        key = (f.subject, f.relation)
        other = held.get(key)
        if other is not None and other.object != f.object and _overlap(other, f):
            out.append(Finding("error", path, line_of.get(f.id), "object",
                               f"{f.subject!r} {f.relation!r} is {f.object!r} here and {other.object!r} in fact {other.id!r} (line {line_of.get(other.id)}): "
                               "the model is taught both and the probes of one contradict the other; keep one, or change it with an `update`"))
        held.setdefault(key, f)
    stops = [f for f in facts if _stop_token(f.object) is not None]
    if stops:  # one warning per file: imported text targets can hold many
        first = list({f.object: f for f in reversed(stops)}.values())[::-1][:3]  # three distinct objects, first lines
        examples = "; ".join(f"{_short(f.object)} (line {line_of.get(f.id)}: {_stop_token(f.object)!r})" for f in first)
        out.append(Finding("warning", path, line_of.get(stops[0].id), "object",
                           f"{len(stops)} object(s) hold a stop token (a token starting with punctuation), e.g. {examples}: "
                           "ckl's exact match scores them, but generated-text tools (lm-eval-harness, `reference_score`) cut the answer there"))
    return out


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _overlap(a: Fact, b: Fact) -> bool:
    """Whether the validity intervals of two facts meet."""
    a_end = a.valid_until if a.valid_until is not None else float("inf")
    b_end = b.valid_until if b.valid_until is not None else float("inf")
    return a.valid_from < b_end and b.valid_from < a_end


def change_findings(path: str | Path, base: Sequence[Fact], records: Sequence[ChangeRecord]) -> list[Finding]:
    """A `learn` of a (subject, relation) the stream holds at that stage with another object."""
    path = str(path)
    lines: dict[tuple[int, str], int] = {}
    for line, obj in iter_jsonl(path):
        if isinstance(obj.get("id"), str):
            lines.setdefault((obj.get("stage"), obj["id"].strip()), line)
    current: dict[tuple[str, str], Fact] = {(f.subject, f.relation): f for f in base}
    by_id = {f.id: (f.subject, f.relation) for f in base}
    out = []
    for r in records:
        key = (r.fact.subject, r.fact.relation)
        if r.kind == "learn":
            held = current.get(key)
            if held is not None and held.object != r.fact.object:
                out.append(Finding("error", path, lines.get((r.stage, r.fact.id)), "object",
                                   f"learn {r.fact.subject!r} {r.fact.relation!r} = {r.fact.object!r}, but fact {held.id!r} already says {held.object!r}: "
                                   "the model would be taught both; change an object with an `update` of that fact instead"))
            current[key] = r.fact
            by_id[r.fact.id] = key
        elif r.kind == "forget":
            current.pop(by_id.get(r.fact.id, key), None)
        else:
            current[key] = r.fact
    return out


def text_findings(train_path: Path, heldout_path: Path, train: Sequence[str], heldout: Sequence[str]) -> list[Finding]:
    seen = {" ".join(t.split()) for t in train}
    out = []
    if not heldout:
        return out
    for line, raw in enumerate(read_input_text(heldout_path).splitlines(), 1):
        if raw.strip() and " ".join(raw.split()) in seen:
            out.append(Finding("error", str(heldout_path), line, None,
                               f"this held-out line is also in {train_path.name}: held-out perplexity would measure a memorised line"))
    return out


def meta_findings(meta_path: Path, records: Sequence[ChangeRecord], corpus_stages: Sequence[int] = ()) -> list[Finding]:
    if not meta_path.exists():
        return []
    meta = parse_json(read_input_text(meta_path), str(meta_path), None)
    if not isinstance(meta, dict):
        return []
    out = []
    for key in meta:
        if key not in META_KEYS:
            near = closest(key, META_KEYS, cutoff=0.75)
            severity = "error" if near is not None and near not in meta else "warning"
            hint = f"did you mean {near!r}? " if severity == "error" else ""
            out.append(Finding(severity, str(meta_path), None, key, f"unknown key; {hint}(known: {', '.join(META_KEYS)})"))
    stages = meta.get("stages")
    last = max([*(r.stage for r in records), *corpus_stages], default=0)  # a corpus-only stage changes something too
    if isinstance(stages, int) and not isinstance(stages, bool):
        if stages < last:
            out.append(Finding("error", str(meta_path), None, "stages", f"says {stages} stage(s) but changes.jsonl has changes in stage {last}"))
        elif stages > last:
            out.append(Finding("warning", str(meta_path), None, "stages",
                               f"says {stages} stage(s) but the last change (changes.jsonl, corpus.jsonl) is in stage {last}: stages {last + 1}-{stages} change nothing"))
    return out


# ------------------------------------------------------------------ a whole stream


def check_stream(directory: str | Path, rank_metric: bool = False, stream=None) -> list[Finding]:
    """Every finding for the stream directory, errors first (each group in file order).
    `stream`: the directory already loaded (it is loaded here otherwise).

    Raises:
        InputError: what `Stream.load` refuses (the stream cannot be read at all).
    """
    from ckl.data.stream import Stream

    d = Path(directory)
    stream = stream if stream is not None else Stream.load(d)
    records = stream.records()
    objects: dict[str, set[str]] = {}
    for f in [*stream.base, *(r.fact for r in records), *stream.unseen]:
        objects.setdefault(f.relation, set()).add(f.object)
    found: list[Finding] = []
    found += unknown_keys(d / "relations.jsonl", RELATION_KEYS)
    found += unknown_keys(d / "facts.jsonl", FACT_KEYS)
    if (d / "changes.jsonl").exists():
        found += unknown_keys(d / "changes.jsonl", CHANGE_KEYS)
        found += change_findings(d / "changes.jsonl", stream.base, records)
    if (d / "unseen.jsonl").exists():
        found += unknown_keys(d / "unseen.jsonl", FACT_KEYS)
    found += relation_findings(d / "relations.jsonl", stream.relations, objects, rank_metric)
    found += fact_findings(d / "facts.jsonl", stream.base)
    found += text_findings(d / "general_train.txt", d / "general_heldout.txt", stream.general_train, stream.general_heldout)
    found += meta_findings(d / "meta.json", records, [ch.stage for ch in stream.stages if ch.corpus])
    return sorted(found, key=lambda f: (f.severity != "error", f.file, f.line or 0))
