"""CounterFact (Meng et al. 2022, ROME) in EasyEdit's "counterfact-edit" JSON form.

A JSON list of records {case_id, prompt, subject, ground_truth, target_new,
rephrase_prompt, locality_prompt, locality_ground_truth}; `prompt` and `rephrase_prompt`
contain `subject`. Records become `EditCase`s and then the editing stream
(ckl.data.formats.edits). This form carries no relation id: records are grouped by their
prompt's template and their neighbourhood prompts, and each fact is taught in every form
of its group (ckl.data.formats.edits explains how, and why).

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

FIELDS = ("prompt", "subject", "ground_truth", "target_new", "rephrase_prompt", "locality_prompt", "locality_ground_truth")


def read_counterfact(path: str | Path) -> list[EditCase]:
    """Read and validate a counterfact-edit JSON file."""
    path = str(path)
    cases: list[EditCase] = []
    seen: dict[int, int] = {}
    for number, line, record in iter_json_list(path):
        values = {key: text_field(record, key, path, number, line) for key in FIELDS}
        case_id = record.get("case_id")
        if isinstance(case_id, bool) or not isinstance(case_id, int) or case_id < 0:
            raise InputError(path, line, "case_id", f"record {number}: must be an integer >= 0, got {case_id!r}")
        if case_id in seen:
            raise InputError(path, line, "case_id", f"record {number}: duplicate case_id {case_id} (first in record {seen[case_id]})")
        seen[case_id] = number
        subject = values["subject"]
        for key in ("prompt", "rephrase_prompt"):
            if subject not in values[key]:
                raise InputError(path, line, key, f"record {number}: does not contain the subject {subject!r}")
        if values["target_new"] == values["ground_truth"]:
            raise InputError(path, line, "target_new", f"record {number}: equals ground_truth ({values['ground_truth']!r})")
        cases.append(EditCase(
            id=f"cf{case_id}", subject=subject, prompt=values["prompt"], paraphrase=values["rephrase_prompt"],
            target_new=values["target_new"], truth=values["ground_truth"],
            neighbour_prompt=values["locality_prompt"], neighbour_truth=values["locality_ground_truth"],
        ))
    if not cases:
        raise InputError(path, None, None, "no records in file")
    return cases


def counterfact_stream(path: str | Path, edits: int | None = None, batch: int = 100, untouched: int = 0, **options) -> Stream:
    """The CounterFact editing stream: `edits` records edited in batches of `batch`,
    `untouched` more kept true; `options` (forms, taught_targets, seed) as in
    ckl.data.formats.edits.edit_stream."""
    return edit_stream(read_counterfact(path), str(path), edits=edits, batch=batch, untouched=untouched, **options)


def _sample(directory: Path) -> Path:
    """Six CounterFact records in the file's form (the importer contract's input)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / "counterfact.json"
    records = [{
        "case_id": i, "prompt": f"The mother tongue of Ada Vale{i} is", "subject": f"Ada Vale{i}",
        "ground_truth": ("French", "English")[i % 2], "target_new": ("English", "French")[i % 2],
        "rephrase_prompt": f"Ada Vale{i} grew up speaking", "locality_prompt": f"Bo Lind{i} speaks",
        "locality_ground_truth": "French",
    } for i in range(6)]
    path.write_text(json.dumps(records, indent=1))
    return path


register_edit_importer("counterfact", "CounterFact", counterfact_stream, _sample)
