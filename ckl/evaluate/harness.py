"""A stream's probes as lm-evaluation-harness tasks, to check ckl's ranking with the harness.

`export_tasks` writes, per probe kind, a JSONL file of documents and a task YAML in the
harness's own format (`output_type: multiple_choice`): the context is the probe's prompt,
the choices its candidates, the target the index of its answer. The harness then scores
each choice by the summed log-likelihood of `" " + choice` after the prompt and counts the
argmax (`acc`), which is ckl's `rank` metric exactly (the same sum, no length
normalisation, the first of tied choices wins; ckl.model.scoring): running the harness on
a checkpoint and ckl's scorer on the same model gives the same accuracy per task. The
documents keep each probe's id, cohort and stage, so the harness's `--log_samples` output
can be sliced the way ckl's tables are. A group YAML runs every kind at once.

Hand-written: it is a few lines of JSON and YAML in the harness's documented task format;
the harness itself is not a dependency of ckl.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from ckl.data.facts import Probe, atomic_write_text


def _task_name(prefix: str, kind: str) -> str:
    return f"{prefix}_{kind}"


def export_tasks(probes: Sequence[Probe], out: str | Path, prefix: str = "ckl") -> dict[str, int]:
    """Write one harness task per probe kind (and a group of them) under `out`.

    Returns:
        task name -> number of documents.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    by_kind: dict[str, list[Probe]] = {}
    for p in probes:
        if p.candidates and p.answer in p.candidates:  # a probe the rank metric scores
            by_kind.setdefault(p.kind, []).append(p)
    counts = {}
    for kind, group in sorted(by_kind.items()):
        name = _task_name(prefix, kind)
        docs = [{"id": p.id, "prompt": p.prompt, "choices": list(p.candidates), "gold": p.candidates.index(p.answer),
                 "answer": p.answer, "cohort": p.cohort, "stage": p.stage, "change": p.change, "kind": p.kind} for p in group]
        data = out / f"{name}.jsonl"
        atomic_write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        task = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{prompt}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{gold}}",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0, "source": "ckl (ckl.evaluate.harness)"},
        }
        atomic_write_text(out / f"{name}.yaml", yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
        counts[name] = len(docs)
    group = {"group": prefix, "task": sorted(counts), "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
             "metadata": {"version": 1.0}}
    atomic_write_text(out / f"{prefix}.yaml", yaml.safe_dump(group, sort_keys=False))
    return counts
