"""Terminal tables of run summaries (rich)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from ckl.data import cohorts
from ckl.results import numbers
from ckl.results.numbers import Number


def columns() -> list[Number]:
    """The key table's columns: the learning numbers marked `table` (ckl.results.numbers)."""
    return numbers.columns("learning")


def cell(entry: dict[str, Any], number: Number) -> str:
    """A number's mean over seeds as its table shows it, with ± its std over several seeds."""
    value = entry.get(number.key)
    text = number.format(value)
    if value is None and not callable(number.fmt):
        return text
    std = entry.get(f"{number.key}_std")
    if value is not None and std and len(entry.get("seeds", [])) > 1 and number.key not in ("trainable_params",):
        text += f" ±{std:.3f}" if number.key != "seconds" else f" ±{std:.1f}"
    return text


def summary_table(summary: dict[str, dict[str, Any]], title: str = "") -> Table:
    table = Table(title=title or None, header_style="bold")
    table.add_column("method", no_wrap=True)  # a label is never squeezed; numbers wrap first
    cols = numbers.shown(columns(), summary.values())
    for n in cols:
        table.add_column(n.label, justify="right")
    for method, entry in summary.items():
        method = escape(method)  # a label is user text, not rich markup
        if not entry["seeds"]:
            table.add_row(method, *["incomplete"] + [""] * (len(cols) - 1))
            continue
        table.add_row(method, *(cell(entry, n) for n in cols))
    return table


def markdown_table(summary: dict[str, dict[str, Any]], cols: list[Number] | None = None) -> str:
    """The summary as a Markdown table (mean ± std over seeds), for docs and issues."""
    cols = numbers.shown(columns(), summary.values()) if cols is None else cols
    lines = ["| method | seeds | " + " | ".join(n.label for n in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for method, entry in summary.items():
        if not entry["seeds"]:
            lines.append(f"| {method} | 0 | " + " | ".join("-" for _ in cols) + " |")
            continue
        cells = (cell(entry, n) for n in cols)
        lines.append(f"| {method} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matrix_table(method: str, R: list[list[float | None]]) -> Table:
    T = len(R) - 1
    table = Table(title=f"{escape(method)}: accuracy by cohort (rows: after stage i)", header_style="bold")
    table.add_column("row")
    for cohort in [cohorts.INVARIANT] + cohorts.names(cohorts.STAGE, T):
        table.add_column(cohort, justify="right")
    for i, row in enumerate(R):
        table.add_row("before" if i == 0 else f"after {i}", *("-" if v is None else f"{v:.3f}" for v in row))
    return table
