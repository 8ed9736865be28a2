"""Editing runs in numbers: the final editing metrics and the sequential curve per method,
read from a run's store (`ckl show` prints them when the run's stream has edits; the
Markdown forms are what docs/editing.md shows). Definitions: ckl.evaluate.editing."""

from __future__ import annotations

from typing import Any

from ckl.data import cohorts
from ckl.evaluate.editing import edit_metrics, has_edits, retention, sequential_curve
from ckl.results import numbers
from ckl.results.store import Store


def is_editing_run(store: Store) -> bool:
    return has_edits({p.cohort for p in store.probes()})


def editing_summary(store: Store, method: str, seed: int) -> dict[str, Any] | None:
    """Final metrics after the last batch over every edit, seconds per edit, the base
    model's accuracy on the true facts, and the curve; None if the run is incomplete."""
    T = int(store.get_meta("T"))
    if sorted(store.completed_rows(method, seed)) != list(range(T + 1)):
        return None
    at = lambda row: store.outcomes(method, seed, row)
    before, after = at(0), at(T)
    final = edit_metrics(after, before, 1, T)
    final["retention"] = retention(after, before)
    seconds = sum(i["seconds"] for i in store.stage_infos(method, seed))
    final["seconds"] = seconds
    final["seconds_per_edit"] = seconds / final["edits"] if final["edits"] else None
    truths = [o for o in before if o["kind"] == "statement" and cohorts.parse(o["cohort"])[0] in (cohorts.STALE, cohorts.LOCAL, cohorts.INVARIANT)]
    final["base_acc"] = sum(o["em"] for o in truths) / len(truths) if truths else None
    final.update(numbers.computed("editing", numbers.SeedView(store, method, seed, store.get_meta("metric", "em"), ("statement",), T)))
    return {"final": final, "curve": sequential_curve(at, T)}


def _f(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def final_markdown(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per method: the final metrics and seconds per edit."""
    cols = numbers.columns("editing")
    head = "| method | edits | " + " | ".join(n.label for n in cols) + " | s / edit |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for method, s in summaries.items():
        f = s["final"]
        cells = " | ".join(n.format(f.get(n.key)) for n in cols)
        lines.append(f"| {method} | {f['edits']} | {cells} | {_f(f['seconds_per_edit'], '{:.4f}')} |")
    return "\n".join(lines)


def curve_markdown(curve: list[dict[str, Any]]) -> str:
    """The sequential curve of one method: after each batch, the current batch, the
    earlier batches, all edits so far and untouched knowledge."""
    lines = [
        "| after batch | edits so far | efficacy (batch) | efficacy (earlier) | efficacy (all) | generalization (all) | locality (all) | score (all) | untouched acc. | retention |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in curve:
        earlier = c["earlier"]["efficacy"] if c["earlier"] else None
        a = c["all"]
        lines.append(
            f"| {c['batch']} | {c['edits']} | {_f(c['current']['efficacy'])} | {_f(earlier)} | {_f(a['efficacy'])} | "
            f"{_f(a['generalization'])} | {_f(a['locality'])} | {_f(a['score'])} | {_f(c['untouched_acc'])} | {_f(c['retention'])} |"
        )
    return "\n".join(lines)


def editing_markdown(store: Store) -> str:
    """The final table and each method's curve (first seed), as Markdown."""
    summaries = {}
    for method, seed in store.runs():
        if method not in summaries and (s := editing_summary(store, method, seed)) is not None:
            summaries[method] = s
    if not summaries:
        return "no complete editing runs"
    parts = ["### Editing metrics after the last batch", "", final_markdown(summaries)]
    for method, s in summaries.items():
        parts += ["", f"### {method}: after each batch", "", curve_markdown(s["curve"])]
    return "\n".join(parts)
