"""Plots as inline SVG (matplotlib Figure objects without pyplot: no GUI backend, no
global state, no display needed).

Each function returns one `<svg>` element ready to paste into an HTML page: text stays
text (svg.fonttype none, so it is selectable and small), element ids carry a per-figure
prefix (several figures share one page), and the output is byte-identical for the same
input (fixed hash salt, no date). User-supplied strings (method names, cohorts) are
written by matplotlib's SVG writer, which escapes `<`, `>` and `&`; `$` is escaped here
so a label is never read as mathtext.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

import matplotlib
from matplotlib.figure import Figure

from ckl.data import cohorts

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "ckl",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^")]+)')
_MAX_LABEL = 40


def label_text(text: str) -> str:
    """A user string as matplotlib should draw it: literal `$`, bounded length."""
    text = text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"
    return text.replace("$", r"\$")


def to_svg(fig: Figure, prefix: str) -> str:
    """Render `fig` as an inline `<svg>` element whose ids start with `prefix`."""
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: inline SVG has neither
    svg = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = _REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    return svg


def _figure(n: int, ncols: int, cell: tuple[float, float]) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(cell[0] * ncols, cell[1] * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def row_names(T: int) -> list[str]:
    return ["before"] + [f"after {i}" for i in range(1, T + 1)]


def heatmaps(matrices: Sequence[tuple[str, list[list[float | None]]]], prefix: str = "heat") -> str:
    """One results-matrix heatmap per method: rows = after stage i, columns = cohorts."""
    import numpy as np

    fig, axes = _figure(len(matrices), 4, (3.1, 2.6))
    with matplotlib.rc_context(_RC):
        image = None
        for ax, (label, R) in zip(axes, matrices):
            T = len(R) - 1
            data = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)
            image = ax.imshow(np.ma.masked_invalid(data), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for i in range(T + 1):
                for j in range(T + 1):
                    v = data[i, j]
                    text = "–" if np.isnan(v) else f"{v:.2f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if not np.isnan(v) and v > 0.6 else "white")
            ax.set_xticks(range(T + 1), [cohorts.INVARIANT] + cohorts.names(cohorts.STAGE, T), rotation=30, ha="right")
            ax.set_yticks(range(T + 1), row_names(T))
            ax.set_title(label_text(label))
            ax.spines[:].set_visible(False)
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    return to_svg(fig, prefix)


def editing_curves(methods: Sequence[tuple[str, list[dict]]], prefix: str = "editing") -> str:
    """Sequential editing: after each batch, against the number of edits so far, the
    efficacy over every edit so far, their locality, and the accuracy on untouched
    knowledge; one line per method (`ckl.results.editing.sequential_curve` rows)."""
    panels = (
        ("efficacy of every edit so far", lambda c: c["all"]["efficacy"]),
        ("locality (agreement with the pre-edit model)", lambda c: c["all"]["locality"]),
        ("untouched knowledge (accuracy)", lambda c: c["untouched_acc"]),
    )
    fig, axes = _figure(len(panels), 3, (3.6, 3.0))
    with matplotlib.rc_context(_RC):
        for ax, (title, value) in zip(axes, panels):
            for label, curve in methods:
                points = [(c["edits"], value(c)) for c in curve if value(c) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=label_text(label))
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("edits so far")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, frameon=False)
    return to_svg(fig, prefix)


# What a cohort is decides its colour (the reader's first question: should this line stay up
# or fall?); the stage that made it decides its marker. One legend for the whole figure.
_KIND_STYLE = {
    cohorts.INVARIANT: ("#111111", "-", "base knowledge no stage touches (should stay up)"),
    cohorts.STAGE: ("#1f77b4", "-", "taught or updated in stage j (should rise and stay)"),
    cohorts.STALE: ("#ff7f0e", "--", "stage j's outdated objects (should fall)"),
    cohorts.FORGET: ("#d62728", ":", "asked to forget in stage j (should fall)"),
    cohorts.LOCAL: ("#7f7f7f", "-.", "neighbours of stage j's edits (should stay up)"),
    cohorts.UNSEEN: ("#9467bd", "-", "never taught (the floor)"),
}
_STAGE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _cohort_style(cohort: str) -> dict:
    kind, stage = cohorts.parse(cohort)
    colour, dash, _ = _KIND_STYLE.get(kind, ("#111111", "-", ""))
    marker = _STAGE_MARKERS[(stage - 1) % len(_STAGE_MARKERS)] if stage else "o"
    return {"color": colour, "linestyle": dash, "marker": marker, "linewidth": 2.2 if kind == cohorts.INVARIANT else 1.5}


def cohort_curves(methods: Sequence[tuple[str, dict[str, list[float | None]]]], prefix: str = "cohorts") -> str:
    """Accuracy of every cohort after each stage, one panel per method.

    Colour says what a cohort is and which way it should go (black: base knowledge, blue:
    what stage j taught, orange dashed: stage j's outdated objects, red dotted: what stage
    j asked to forget); the marker says which stage (circle: 1, square: 2, ...). One
    legend, above the panels, in the page's font size."""
    from matplotlib.lines import Line2D

    fig, axes = _figure(len(methods), 3, (3.8, 3.0))
    seen_kinds, seen_stages = [], set()
    with matplotlib.rc_context(_RC):
        for ax, (label, curves) in zip(axes, methods):
            T = max((len(v) for v in curves.values()), default=1) - 1
            for cohort, values in curves.items():
                xs = [i for i, v in enumerate(values) if v is not None]
                kind, stage = cohorts.parse(cohort)
                seen_kinds += [kind] if kind not in seen_kinds else []
                seen_stages |= {stage} if stage else set()
                ax.plot(xs, [values[i] for i in xs], markersize=5, label=label_text(cohort), **_cohort_style(cohort))
            ax.set_xticks(range(T + 1), row_names(T))
            ax.set_ylim(-0.03, 1.03)
            ax.set_ylabel("accuracy")
            ax.set_title(label_text(label), fontsize=10, fontweight="bold")
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=_KIND_STYLE[k][0], linestyle=_KIND_STYLE[k][1], linewidth=2, label=_KIND_STYLE[k][2])
                   for k in seen_kinds if k in _KIND_STYLE]
        handles += [Line2D([], [], color="#555555", linestyle="none", marker=_STAGE_MARKERS[(j - 1) % len(_STAGE_MARKERS)], markersize=6,
                           label=f"stage {j}") for j in sorted(seen_stages)]
        if handles:
            fig.legend(handles=handles, loc="outside upper center", ncol=min(3, len(handles)), fontsize=9, frameon=False)
    return to_svg(fig, prefix)


def training_curves(methods: Sequence[tuple[str, list[dict]]], prefix: str = "training") -> str:
    """Accuracy of each scored cohort inside the stages (`train.eval_every`), against the
    optimiser steps of the whole stream; dotted lines where a stage begins. One panel per
    method, cohorts styled as in `cohort_curves` (`ckl.report.data.training_curve` rows)."""
    fig, axes = _figure(len(methods), 3, (3.8, 3.0))
    with matplotlib.rc_context(_RC):
        for ax, (label, rows) in zip(axes, methods):
            for cohort in sorted({r["cohort"] for r in rows}, key=lambda c: (cohorts.parse(c)[0] != cohorts.INVARIANT, c)):
                points = [(r["global_step"], r["accuracy"]) for r in rows if r["cohort"] == cohort and r["accuracy"] is not None]
                if points:
                    style = {**_cohort_style(cohort), "marker": None}
                    ax.plot(*zip(*points), label=label_text(cohort), **style)
            for start in sorted({r["global_step"] for r in rows if r["step"] == 0})[1:]:
                ax.axvline(start, color="#999999", linestyle=":", linewidth=1)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("optimiser steps")
            ax.set_ylabel("accuracy")
            ax.set_title(label_text(label), fontsize=10, fontweight="bold")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, frameon=False)
    return to_svg(fig, prefix)


def study_panels(panels: Sequence[dict], prefix: str = "study") -> str:
    """A study's panels as its result stores them (ckl.study.base): per panel a title, axis
    labels and scales, and series of x/y points; a series marked `fit` is a dashed fitted
    law, one marked `points` is drawn as markers, labelled with its `names`."""
    fig, axes = _figure(len(panels), 3, (3.8, 3.0))
    with matplotlib.rc_context(_RC):
        for ax, panel in zip(axes, panels):
            colours: dict[str, str] = {}  # a fitted law is drawn in its data's colour ("x fit" after "x")
            for series in panel["series"]:
                pairs = [(x, y) for x, y in zip(series["x"], series["y"]) if x is not None and y is not None
                         and (not panel.get("xlog") or x > 0) and (not panel.get("ylog") or y > 0)]
                if not pairs:
                    continue
                xs, ys = zip(*pairs)
                if series.get("points"):
                    ax.plot(xs, ys, "o", label=label_text(series["label"]))
                    for name, x, y in zip(series.get("names", []), series["x"], series["y"]):
                        if x is not None and y is not None and (not panel.get("ylog") or y > 0):
                            ax.annotate(label_text(name), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
                else:
                    colour = colours.get(series["label"].removesuffix(" fit")) if series.get("fit") else None
                    (line,) = ax.plot(xs, ys, linestyle="--" if series.get("fit") else "-", linewidth=1 if series.get("fit") else 1.8,
                                      label=label_text(series["label"]), **({"color": colour} if colour else {}))
                    colours.setdefault(series["label"], line.get_color())
            if panel.get("xlog"):
                ax.set_xscale("log")
            if panel.get("ylog"):
                ax.set_yscale("log")
            ax.set_xlabel(label_text(panel.get("xlabel", "")))
            ax.set_ylabel(label_text(panel.get("ylabel", "")))
            ax.set_title(label_text(panel.get("title", "")), fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, frameon=False)
    return to_svg(fig, prefix)


def pareto(points: dict[str, tuple[float, float]], spreads: dict[str, tuple[float, float]], front: Sequence[str], prefix: str = "pareto") -> str:
    """Retention (x) against acquisition (y), one point per method; the Pareto front
    (no other method is better on both) in red, joined by a line."""
    with matplotlib.rc_context(_RC):
        big = len(points) > 12
        fig = Figure(figsize=(9.0, 6.4) if big else (6.4, 4.6))
        ax = fig.subplots()
        for label, (x, y) in points.items():
            on = label in front
            sx, sy = spreads.get(label, (0.0, 0.0))
            if sx or sy:
                ax.errorbar(x, y, xerr=sx or None, yerr=sy or None, color="#c0392b" if on else "#7f8c8d", alpha=0.5, linewidth=1, capsize=2)
            ax.scatter([x], [y], s=60 if on else 36, marker="D" if on else "o", color="#c0392b" if on else "#7f8c8d", zorder=3, edgecolor="black", linewidth=0.5)
        for label, (dx, dy) in _label_offsets(points, fig.get_size_inches()).items():
            x, y = points[label]
            ax.annotate(label_text(label), (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                        color="#c0392b" if label in front else "black",
                        arrowprops={"arrowstyle": "-", "color": "#bbbbbb", "linewidth": 0.6} if abs(dy) > 6 else None)
        if front:
            fx, fy = zip(*(points[k] for k in front))
            ax.plot(fx, fy, color="#c0392b", linewidth=1.2, linestyle="--", label="Pareto front", zorder=2)
            ax.legend(loc="lower left", frameon=False)
        top = max([1.05] + [x + 0.05 for x, _ in points.values()])
        ax.set_xlim(-0.02, top)
        ax.set_ylim(-0.02, max([1.05] + [y + 0.05 for _, y in points.values()]))
        ax.set_xlabel("retention of base knowledge (after / before)")
        ax.set_ylabel("acquisition (new facts known at the end)")
        ax.grid(alpha=0.3)
    return to_svg(fig, prefix)


def _label_offsets(points: dict[str, tuple[float, float]], size_in: Sequence[float]) -> dict[str, tuple[int, int]]:
    """Text offsets (points) that keep the labels of a scatter from overlapping: each label
    goes right of its point, moved up or down in steps until its box (width estimated from
    its length) clears every label placed before it. Greedy, top to bottom; matplotlib has
    no label placement of its own and adjustText would be a dependency for one plot."""
    width_pt, height_pt = size_in[0] * 72 * 0.8, size_in[1] * 72 * 0.8  # the axes' share of the figure
    xs = [x for x, _ in points.values()] + [0.0, 1.05]
    ys = [y for _, y in points.values()] + [0.0, 1.05]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, float, float]] = []
    out = {}
    for label, (x, y) in sorted(points.items(), key=lambda kv: (-kv[1][1], kv[1][0])):
        px, py = (x - min(xs)) / span_x * width_pt, (y - min(ys)) / span_y * height_pt
        w, h = 4.6 * min(len(label), 40) + 2, 10.0
        for step in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6):
            box = (px + 6, py + 2 + step * h, px + 6 + w, py + 2 + step * h + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        out[label] = (6, int(2 + step * h))
    return out


def before_after(rows: Sequence[tuple[str, float | None, float | None]], prefix: str = "bars") -> str:
    """Grouped bars: accuracy before and after, per probe set (for `ckl update`)."""
    import numpy as np

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(1.2 * max(3, len(rows)) + 1.5, 3.2))
        ax = fig.subplots()
        xs = np.arange(len(rows))
        before = [np.nan if b is None else b for _, b, _ in rows]
        after = [np.nan if a is None else a for _, _, a in rows]
        ax.bar(xs - 0.2, before, width=0.4, label="before", color="#95a5a6")
        ax.bar(xs + 0.2, after, width=0.4, label="after", color="#2e86c1")
        for x, b, a in zip(xs, before, after):
            for dx, v in ((-0.2, b), (0.2, a)):
                if not np.isnan(v):
                    ax.text(x + dx, v + 0.02, f"{v:.2f}", ha="center", fontsize=7)
        ax.set_xticks(xs, [label_text(name) for name, _, _ in rows])
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("accuracy")
        ax.legend(frameon=False, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return to_svg(fig, prefix)
