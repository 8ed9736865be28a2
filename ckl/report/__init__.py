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
    """The key table of `ckl show` for several runs side by side (a rich Table), the
    labels on the retention/acquisition Pareto front, and a warning (or None) when the
    runs are different experiments (another stream, base model or evaluation), whose
    numbers one front should not rank together."""
    from rich.markup import escape

    from ckl.report.data import gather
    from ckl.report.table import summary_table

    data = gather(list(run_dirs), drill=False)
    summary = {escape(m.label): m.summary for m in data.methods}  # "[...]" in a name is text, not markup
    title = escape("compared: " + ", ".join(r.name for r in data.runs))
    experiments = {r.experiment for r in data.runs}
    warning = None
    if len(experiments) > 1 or None in experiments:
        warning = ("these runs are not one experiment (their stream, base model or evaluation differ, or a run predates "
                   "the marker that says): the table and the Pareto front put numbers measured on different things side by side")
    return summary_table(summary, title=title), data.pareto, warning
