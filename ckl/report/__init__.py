"""Reports of runs: one self-contained HTML file (`write_report`) and the terminal
comparison table (`compare_table`).

    data.py   what a report shows, gathered from run directories
    plots.py  the plots, as inline SVG
    html.py   the page
"""

from __future__ import annotations

from pathlib import Path

from ckl.data.facts import atomic_write_text


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Gather `run_dirs` and write the HTML report to `out` (atomically).

    Raises:
        InputError: a directory is not a run directory.
    """
    from ckl.report.data import gather
    from ckl.report.html import report_page

    text = report_page(gather(list(run_dirs)))
    atomic_write_text(out, text)
    return Path(out)


def compare_table(run_dirs: list[str | Path]):
    """The key table of `ckl show` for several runs side by side (a rich Table), and the
    labels on the retention/acquisition Pareto front."""
    from rich.markup import escape

    from ckl.report.data import gather
    from ckl.report.table import summary_table

    data = gather(list(run_dirs), drill=False)
    summary = {escape(m.label): m.summary for m in data.methods}  # "[...]" in a name is text, not markup
    title = escape("compared: " + ", ".join(r.name for r in data.runs))
    return summary_table(summary, title=title), data.pareto
