"""zsRE (Levy et al. 2017) in MEND's JSON form (Mitchell et al. 2022).

A JSON list of records {subject, src (question), rephrase, alt (new answer), answers
[true answers], loc (an unrelated Natural Questions question), loc_ans, pred?, cond?}; `src`
and `rephrase` contain `subject`. The first of `answers` is the true answer. Records
become `EditCase`s (id "zsre<record number>") and then the editing stream
(ckl.data.formats.edits): the question is the edit prompt, the rephrase the paraphrase and
the NQ question the neighbourhood (locality) prompt. Records whose new answer equals the
true answer, or is empty, ask for no change and are skipped (both occur in the 1k file).

Every malformed record raises InputError naming the file, the line, the field and the
record number; nothing is written.
"""

from __future__ import annotations

import json

from pathlib import Path

from ckl.core.errors import InputError
from ckl.data.formats.edits import EditCase, edit_stream, register_edit_importer
from ckl.data.formats.json_list import iter_json_list, text_field
from ckl.data.stream import Stream

FIELDS = ("subject", "src", "rephrase", "loc", "loc_ans")


def read_zsre(path: str | Path) -> list[EditCase]:
    """Read and validate a zsRE (MEND form) JSON file."""
    path = str(path)
    cases: list[EditCase] = []
    for number, line, record in iter_json_list(path):
        values = {key: text_field(record, key, path, number, line) for key in FIELDS}
        alt = record.get("alt")
        if not isinstance(alt, str):
            raise InputError(path, line, "alt", f"record {number}: must be a string, got {alt!r}")
        answers = record.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise InputError(path, line, "answers", f"record {number}: must be a non-empty list of non-empty strings")
        subject = values["subject"]
        for key in ("src", "rephrase"):
            if subject not in values[key]:
                raise InputError(path, line, key, f"record {number}: does not contain the subject {subject!r}")
        truth = answers[0].strip()
        if alt.strip() in ("", truth):  # real zsRE cases (records 102, 535 of the 1k file): no edit to make
            continue
        cases.append(EditCase(
            id=f"zsre{number}", subject=subject, prompt=values["src"], paraphrase=values["rephrase"],
            target_new=alt.strip(), truth=truth, neighbour_prompt=values["loc"], neighbour_truth=values["loc_ans"],
        ))
    if not cases:
        raise InputError(path, None, None, "no records in file")
    return cases


def zsre_stream(path: str | Path, edits: int | None = None, batch: int = 100, untouched: int = 0, **options) -> Stream:
    """The zsRE editing stream: `edits` records edited in batches of `batch`, `untouched`
    more kept true (see ckl.data.formats.edits)."""
    return edit_stream(read_zsre(path), str(path), edits=edits, batch=batch, untouched=untouched, **options)


def _sample(directory: Path) -> Path:
    """Six zsRE records in the file's form (the importer contract's input)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / "zsre.json"
    records = [{
        "subject": f"Acme{i}", "src": f"What is the product made by Acme{i}?", "rephrase": f"What does Acme{i} make?",
        "alt": ("tools", "boats")[i % 2], "answers": [("boats", "tools")[i % 2]],
        "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare",
    } for i in range(6)]
    path.write_text(json.dumps(records, indent=1))
    return path


register_edit_importer("zsre", "zsRE", zsre_stream, _sample)
