"""Terminal tables of run summaries (rich)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from ckl.evaluate.metrics import format_fuar

COLUMNS = (
    ("retention", "retention", "{:.3f}"),
    ("acquisition", "acquired", "{:.3f}"),
    ("update", "updated", "{:.3f}"),
    ("stale", "stale", "{:.3f}"),
    ("fuar", "FUAR", None),
    ("acc", "ACC", "{:.3f}"),
    ("bwt", "BWT", "{:+.3f}"),
    ("forgetting", "forgetting", "{:.3f}"),
    ("extraction_retention", "extr. ret.", "{:.3f}"),
    ("extraction_acquisition", "extr. acq.", "{:.3f}"),
    ("paraphrase_retention", "para. ret.", "{:.3f}"),
    ("paraphrase_acquisition", "para. acq.", "{:.3f}"),
    ("perplexity_after", "ppl", "{:.2f}"),
    ("trainable_params", "trainable", "{:,.0f}"),
    ("seconds", "seconds", "{:.1f}"),
)


def cell(entry: dict[str, Any], key: str, fmt: str | None) -> str:
    value = entry.get(key)
    if key == "fuar":
        text = format_fuar(value)  # None: no seed gained anything ("no gain")
    elif value is None:
        return "-"
    else:
        text = fmt.format(value)
    std = entry.get(f"{key}_std")
    if value is not None and std and len(entry.get("seeds", [])) > 1 and key not in ("trainable_params",):
        text += f" ±{std:.3f}" if key != "seconds" else f" ±{std:.1f}"
    return text


def summary_table(summary: dict[str, dict[str, Any]], title: str = "") -> Table:
    table = Table(title=title or None, header_style="bold")
    table.add_column("method", no_wrap=True)  # a label is never squeezed; numbers wrap first
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for method, entry in summary.items():
        method = escape(method)  # a label is user text, not rich markup
        if not entry["seeds"]:
            table.add_row(method, *["incomplete"] + [""] * (len(COLUMNS) - 1))
            continue
        table.add_row(method, *(cell(entry, key, fmt) for key, _, fmt in COLUMNS))
    return table


def markdown_table(summary: dict[str, dict[str, Any]], columns=COLUMNS) -> str:
    """The summary as a Markdown table (mean ± std over seeds), for docs and issues."""
    lines = ["| method | seeds | " + " | ".join(h for _, h, _ in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for method, entry in summary.items():
        if not entry["seeds"]:
            lines.append(f"| {method} | 0 | " + " | ".join("-" for _ in columns) + " |")
            continue
        cells = (cell(entry, key, fmt) for key, _, fmt in columns)
        lines.append(f"| {method} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matrix_table(method: str, R: list[list[float | None]]) -> Table:
    T = len(R) - 1
    table = Table(title=f"{escape(method)}: accuracy by cohort (rows: after stage i)", header_style="bold")
    table.add_column("row")
    table.add_column("invariant", justify="right")
    for j in range(1, T + 1):
        table.add_column(f"stage{j}", justify="right")
    for i, row in enumerate(R):
        table.add_row("before" if i == 0 else f"after {i}", *("-" if v is None else f"{v:.3f}" for v in row))
    return table
