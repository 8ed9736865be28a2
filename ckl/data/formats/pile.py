"""Pile extraction targets (the 128-sequence CSV of Jang et al. 2023, "Knowledge
Unlearning for Mitigating Privacy Risks in Language Models") -> a ckl Stream.

Input: a CSV with header `doc_id,corpus,text`; one target sequence per record.

The scenario: the base model memorises every kept target (K0), then the stages ask to
forget the first `forget` of them; extraction likelihood and memorisation accuracy
(ckl.evaluate.unlearning) measure how much of each can still be extracted. Each target
is a text fact (ckl.data.formats.text_targets): its first `prefix_words` whitespace-separated
words are the prompt and the next `suffix_words` the continuation, with the original
characters kept (trailing punctuation of the continuation dropped: `trim_end`).

Deviations from the paper: GPT-Neo was pretrained on the Pile and already memorised
these sequences; ckl's base model is trained from scratch to memorise them (a
contamination-free protocol). Targets are cut to prefix + suffix so that a tiny
model can memorise them on a CPU; a target shorter than prefix + 1 words is split in
half instead, and the number of such targets is recorded in the stream's meta.
"""

from __future__ import annotations


import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ckl.core.errors import InputError
from ckl.data.facts import MAX_TEXT_CHARS
from ckl.data.formats.text_targets import TEXT_RELATION, text_fact, trim_end
from ckl.data.formats.registry import Importer, describe_deletions, register_importer
from ckl.data.stream import Change, Stream

COLUMNS = ("doc_id", "corpus", "text")
_WORD = re.compile(r"\S+")


@dataclass
class PileConfig:
    """How many targets, how long, and how the deletion requests arrive."""

    limit: int = field(default=0, metadata={"help": "use the first N targets of the file (0 = all)"})
    prefix_words: int = field(default=32, metadata={"help": "words of each target given as the prompt"})
    suffix_words: int = field(default=32, metadata={"help": "words after the prompt that must be memorised, then unlearned"})
    forget: int = field(default=0, metadata={"help": "targets to unlearn (the first N of those used); 0 = half"})
    unseen: int = field(default=0, metadata={"help": "targets held out entirely (the last N used): never taught, the never-seen floor"})
    stages: int = field(default=1, metadata={"help": "split the forget requests into this many stages (streaming deletion)"})

    def __post_init__(self) -> None:
        for name in ("limit", "forget", "unseen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("prefix_words", "suffix_words", "stages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _split(text: str, prefix_words: int, suffix_words: int) -> tuple[str, str, bool]:
    """(prompt, continuation, shortened?) cut at word boundaries of the original text; the
    continuation ends on a letter or digit (`trim_end`) when it has one."""
    words = list(_WORD.finditer(text))
    short = len(words) < prefix_words + 1
    k = len(words) // 2 if short else prefix_words
    end = words[min(len(words), k + suffix_words) - 1].end()
    return text[: words[k - 1].end()], trim_end(text[words[k].start(): end]), short


def read_pile_csv(path: str | Path) -> list[tuple[str, str]]:
    """(doc_id, text) per record of the CSV, validated.

    Raises:
        InputError: missing file or column, a non-integer or repeated doc_id, or a text
            of fewer than two words (file and line named).
    """
    path = str(path)
    if not Path(path).is_file():
        raise InputError(path, None, None, "file not found")
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise InputError(path, 1, missing[0], f"missing column (header has: {', '.join(header) or 'nothing'})")
            line = reader.line_num + 1
            for row in reader:
                if None in row or any(row.get(c) is None for c in COLUMNS):
                    raise InputError(path, line, None, f"expected {len(header)} columns")
                doc_id = row["doc_id"].strip()
                if not doc_id.isdigit():
                    raise InputError(path, line, "doc_id", f"must be a non-negative integer, got {doc_id!r}")
                if doc_id in seen:
                    raise InputError(path, line, "doc_id", f"repeats the record on line {seen[doc_id]}")
                if len(_WORD.findall(row["text"])) < 2:
                    raise InputError(path, line, "text", "needs at least two words (a prompt and a continuation)")
                seen[doc_id] = line
                out.append((doc_id, row["text"]))
                line = reader.line_num + 1
        except UnicodeDecodeError:
            raise InputError(path, None, None, "not valid UTF-8") from None
        except csv.Error as err:
            raise InputError(path, reader.line_num, None, f"invalid CSV: {err}") from None
    if not out:
        raise InputError(path, None, None, "no records")
    return out


def load_pile(path: str | Path, config: PileConfig | None = None) -> Stream:
    """Read the extraction targets into a Stream: K0 = kept + forget targets, stages = forget.

    Raises:
        InputError: a malformed file, or more targets asked for than the file has.
    """
    config = config or PileConfig()
    records = read_pile_csv(path)
    if config.limit:
        if config.limit > len(records):
            raise InputError(str(path), None, "limit", f"asked for {config.limit} targets, the file has {len(records)}")
        records = records[: config.limit]
    facts, shortened = [], 0
    for doc_id, text in records:
        prompt, continuation, short = _split(text, config.prefix_words, config.suffix_words)
        for part, what in ((prompt, "prompt"), (continuation, "continuation")):
            if len(part) > MAX_TEXT_CHARS:
                raise InputError(str(path), None, "text", f"doc_id {doc_id}: its {what} is {len(part)} characters long; at most {MAX_TEXT_CHARS} are allowed (docs/formats.md)")
        shortened += short
        facts.append(text_fact(f"pile-{doc_id}", prompt, continuation))
    n_unseen = config.unseen
    if n_unseen >= len(facts):
        raise InputError(str(path), None, "unseen", f"holding out {n_unseen} of {len(facts)} targets leaves none to teach")
    taught = facts[: len(facts) - n_unseen]
    n_forget = config.forget or len(taught) // 2
    if n_forget < config.stages or n_forget > len(taught):
        raise InputError(str(path), None, "forget", f"{n_forget} forget targets do not fit {len(taught)} taught targets in {config.stages} stages")
    forget = taught[:n_forget]
    per = -(-n_forget // config.stages)
    stages = tuple(Change(stage=j + 1, forget=tuple(forget[j * per:(j + 1) * per])) for j in range(config.stages))
    return Stream(
        relations={TEXT_RELATION.name: TEXT_RELATION},
        base=tuple(taught),
        stages=tuple(s for s in stages if s.forget),
        unseen=tuple(facts[len(facts) - n_unseen:]),
        meta={"scenario": "pile_extraction", "source": str(path), "targets": len(taught), "forget": n_forget,
              "unseen": n_unseen, "shortened": shortened},
    )


def _sample(directory: Path) -> Path:
    """Eight extraction targets in the benchmark's CSV form (the importer contract's input)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / "pile.csv"
    words = ("the old map was kept in a wooden box near the river and nobody opened it for years until "
             "a child found the key under a stone by the mill and carried it home through the rain").split()
    rows = [f'{i},Pile-CC,"{" ".join((words[i:] + words[:i]) * 2)}"' for i in range(8)]  # 68 words: a default 32 + 32 split
    path.write_text("doc_id,corpus,text\n" + "\n".join(rows) + "\n")
    return path


register_importer(Importer(
    "pile", PileConfig, lambda path, o: load_pile(path, o),
    "The Pile extraction targets -> an unlearning stream (memorise, then forget).",
    "CSV", "the Pile extraction targets (doc_id,corpus,text)", _sample, describe_deletions,
))
