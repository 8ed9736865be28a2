"""One self-contained HTML page: inline CSS and SVG, no script, no external resource.

Every string that comes from a user (run and method names, fact text, prompts, answers,
model outputs) goes through `esc` (html.escape) before it reaches the page; plots carry
their text through matplotlib's escaping SVG writer. A Content-Security-Policy forbids
scripts and every external load, so even a string that slipped through could not run.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from ckl.evaluate.metrics import format_fuar
from ckl.report import plots
from ckl.report.data import MethodReport, ReportData
from ckl.report.table import cell, columns
from ckl.results import numbers

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1c2833;
       margin: 0 auto; max-width: 1280px; padding: 18px 28px 60px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 30px 0 8px; border-bottom: 1px solid #d5d8dc; }
h3 { font-size: 14px; margin: 16px 0 6px; }
p.note, .muted { color: #566573; } p.note { margin: 4px 0 10px; max-width: 900px; }
p.warning { color: #922b21; background: #fdedec; padding: 6px 10px; max-width: 900px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 9px; border-bottom: 1px solid #eaecee; text-align: right; vertical-align: top; }
th { background: #f4f6f7; font-weight: 600; } td.text, th.text { text-align: left; }
tr.front td:first-child { font-weight: 600; color: #c0392b; }
svg { max-width: 100%; height: auto; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
td.wrong { color: #c0392b; } code { font-size: 12px; }
.banner { padding: 10px 14px; border-radius: 6px; font-weight: 600; margin: 10px 0; }
.banner.ok { background: #e9f7ef; border: 1px solid #27ae60; } .banner.fail { background: #fdedec; border: 1px solid #c0392b; }
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text and attribute context."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """A whole HTML document around `body` (already escaped markup)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], text_columns: int = 1,
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; every header and cell is escaped. The first `text_columns` columns
    are left-aligned."""
    def cls(j: int) -> str:
        return ' class="text"' if j < text_columns else ""

    head = "".join(f"<th{cls(j)}>{esc(h)}</th>" for j, h in enumerate(headers))
    body = []
    for i, row in enumerate(rows):
        rc = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{rc}>" + "".join(f"<td{cls(j)}>{esc(c)}</td>" for j, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


# --------------------------------------------------------------------------- sections


def _weak_base_warning(data: ReportData) -> list[str]:
    weak = [r for r in data.runs if r.weak_base]
    if not weak:
        return []
    lines = "; ".join(f"{r.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.weak_base.get("knowledge", {}).items()) for r in weak)
    return [f'<p class="warning"><strong>Warning: the base model missed its pretraining target</strong> ({esc(lines)}). '
            "The run used it because allow_weak_base was set; every number below is measured on a model that does not "
            "know its base facts well, so read them with that in mind.</p>"]


def _runs(data: ReportData) -> str:
    from ckl.core.environment import describe

    rows = [(r.name, r.path, r.stages, r.metric, r.probes, "; then ".join(describe(e) for e in r.environments) or "not recorded")
            for r in data.runs]
    return table(["run", "directory", "stages", "metric", "probes", "measured with"], rows, text_columns=2)


def _key_table(data: ReportData) -> str:
    cols = numbers.shown(columns(), (m.summary for m in data.methods if m.complete))
    # perplexity has no meaning without the base model's beside it (every method starts from it)
    bases = {round(m.summary["perplexity_before"], 2) for m in data.methods if m.complete and m.summary.get("perplexity_before") is not None}
    base = f" (base {bases.pop():.2f})" if len(bases) == 1 else ""
    headers = ["method"] + [n.label + (base if n.key == "perplexity_after" else "") for n in cols] + ["seed(s)"]
    rows, classes = [], []
    for m in data.methods:
        if not m.complete:
            rows.append([m.label, "incomplete"] + [""] * (len(cols) - 1) + [", ".join(map(str, m.summary["incomplete_seeds"]))])
        else:
            rows.append([m.label] + [cell(m.summary, n) for n in cols] + [", ".join(map(str, m.summary["seeds"]))])
        classes.append("front" if m.label in data.pareto else "")
    return table(headers, rows, row_classes=classes)


def _forgetting_table(methods: list[MethodReport]) -> str:
    rows = []
    for m in methods:
        s = m.summary
        rows.append([
            m.label, (format_fuar(s["fuar"]) if s.get("fuar_defined", True) else "- (nothing to gain)")
            + (f" ({s['fuar_no_gain_seeds']} seed(s) no gain)" if s["fuar_no_gain_seeds"] and s["fuar"] is not None else ""),
            _num(s["bwt"], "{:+.3f}"), _num(s["forgetting"]), _num(s["fwt"], "{:+.3f}"), _num(s["plasticity"]), _num(s["acc"]),
            f"{_num(s['invariant_before'])} → {_num(s['invariant_after'])}", _num(s["stale"]), _num(s["forget_kept"]),
        ])
    headers = ["method", "FUAR", "BWT", "forgetting", "FWT", "plasticity", "ACC", "invariant before → after", "stale", "forget requests still known"]
    return table(headers, rows)


def _cost_table(methods: list[MethodReport]) -> str:
    rows = []
    for m in methods:
        s = m.summary
        not_applied = ", ".join(f"{n} {kind}" for kind, n in s["not_applied"].items()) or "none"
        rows.append([
            m.label, _num(s["seconds"], "{:.1f}"), _num(s["trainable_params"], "{:,.0f}"), _num(s["tokens_seen"], "{:,.0f}"),
            f"{_num(s['perplexity_before'], '{:.1f}')} → {_num(s['perplexity_after'], '{:.1f}')}", not_applied,
        ])
    headers = ["method", "seconds (all stages)", "trainable parameters", "tokens seen", "perplexity before → after", "requests not applied (per seed)"]
    return table(headers, rows)


def _probe_table(rows: list[dict[str, Any]], total: int) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    body = table(
        ["fact", "cohort", "change", "prompt", "expected", "model's answer", "when"],
        [[r["fact_id"], r["cohort"], r["change"], r["prompt"], r["answer"],
          r["predicted"] if not r["rank_ok"] else f"{r['predicted']} (ranked first, but greedy output differs)", r["when"]]
         for r in rows],
        text_columns=7,
    )
    more = f'<p class="muted">showing {len(rows)} of {total}</p>' if total > len(rows) else ""
    return body + more


def _drill_down(methods: list[MethodReport]) -> str:
    parts = []
    for m in methods:
        if not m.complete:
            continue
        parts.append(
            f"<details><summary>{esc(m.label)}: forgot {m.forgotten_total:,} of the {m.known_total:,} facts it knew when last taught, "
            f"did not learn {m.not_learned_total:,} of the {m.taught_total:,} the stages taught "
            f"(seed {esc(m.drill_seed)})</summary>"
            f"<h3>Forgotten: known earlier, wrong after the last stage</h3>{_probe_table(m.forgotten, m.forgotten_total)}"
            f"<h3>Not learned: wrong right after the stage that taught it</h3>{_probe_table(m.not_learned, m.not_learned_total)}"
            "</details>"
        )
    return "".join(parts) or '<p class="muted">no complete method</p>'


def _family_table(family: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per method of a family's key numbers (ckl.results.numbers)."""
    cols = numbers.columns(family)
    return table(["method"] + [n.label for n in cols], [[label] + [n.format(entry.get(n.key)) for n in cols] for label, entry in rows])


def _unlearning_section(methods: list[MethodReport]) -> list[str]:
    rows = [(m.label, m.unlearning) for m in methods if m.unlearning]
    if not rows:
        return []
    return [
        "<h2>Unlearning</h2>",
        '<p class="note">Methods that applied the deletion requests, means over seeds. Forget before / after: '
        "accuracy on the forgotten facts; floor: never-seen accuracy; efficacy: (before - after) / (before - floor); "
        "retention and boundary: the kept facts and the forgotten subjects' other facts, after / before; after "
        "attack and recovered: the relearning attack, when the run had one. Definitions in docs/unlearning.md.</p>",
        _family_table("unlearning", rows),
    ]


def _editing_section(methods: list[MethodReport]) -> list[str]:
    edited = [(m.label, m.editing) for m in methods if m.editing]
    if not edited:
        return []
    finals = [(m.label, m.editing_final) for m in methods if m.editing_final]
    return [
        "<h2>Sequential editing</h2>",
        '<p class="note">After the last batch (first complete seed); definitions in docs/editing.md.</p>',
        _family_table("editing", finals),
        '<p class="note">After each batch of edits (first complete seed): exact match of every edit made so far, '
        "agreement with the pre-edit model on the neighbourhood prompts, and accuracy on knowledge no edit "
        "touched. Gradual forgetting shows as falling lines; definitions in docs/editing.md.</p>",
        plots.editing_curves(edited),
    ]


def _study_sections(data: ReportData) -> list[str]:
    out = []
    for run in data.runs:
        study = run.study
        if not study:
            continue
        out += [
            f"<h2>Study: {esc(study['name'])}</h2>",
            f"<p><b>{esc(study['question'])}</b> ({esc(study['paper'])}; seeds {esc(', '.join(map(str, study['seeds'])))}; "
            "docs/studies.md)</p>",
            f'<p>Verdict: <b>{esc(study["verdict"])}</b>. {esc(study["line"])}</p>',
            plots.study_panels(study["panels"]) if study.get("panels") else "",
        ]
    return out


def _training_section(methods: list[MethodReport]) -> list[str]:
    curved = [(m.label, m.training_curve) for m in methods if m.training_curve]
    if not curved:
        return []
    return [
        "<h2>Inside the stages</h2>",
        '<p class="note">Accuracy on statement probes scored while each stage trained (<code>train.eval_every</code>; '
        "a seeded sample of each cohort, the same for every method of a seed), against the optimiser steps of the "
        "whole stream; a dotted line marks where a stage begins. First seed with a curve.</p>",
        plots.training_curves(curved),
    ]


def report_page(data: ReportData) -> str:
    """The whole report for `data` as one HTML document."""
    from ckl import __version__

    done = [m for m in data.methods if m.complete]
    points = {m.label: (m.summary["retention"], m.summary["acquisition"]) for m in done
              if m.summary["retention"] is not None and m.summary["acquisition"] is not None}
    spreads = {m.label: (m.summary["retention_std"] or 0.0, m.summary["acquisition_std"] or 0.0) for m in done}
    metric = ", ".join(sorted({r.metric for r in data.runs}))
    body = [
        "<h1>ckl report</h1>",
        f'<p class="muted">generated by ckl {esc(__version__)}; accuracy = {esc(metric)} on statement probes; '
        "mean ± standard deviation over seeds where a method ran several.</p>",
        _runs(data),
        *_weak_base_warning(data),
        *_study_sections(data),
        "<h2>Methods at a glance</h2>",
        '<p class="note">Retention: invariant base knowledge after the last stage / before the first. '
        "Acquired: new facts known at the end. Updated: new object of changed facts. Stale: the outdated object "
        "still answered (lower is better). FUAR: base facts forgotten per fact gained (lower is better). "
        "Methods on the Pareto front of retention and acquisition are in red.</p>",
        _key_table(data),
        "<h2>Retention against acquisition</h2>",
        '<p class="note">Up and to the right is better. A method on the dashed Pareto front is not beaten on both '
        "axes by any other; a method below it is (choose from the front according to what matters more to you).</p>",
        plots.pareto(points, spreads, data.pareto) if points else '<p class="muted">no complete method</p>',
        "<h2>Results matrix per method</h2>",
        '<p class="note">R[i][j]: accuracy on cohort j (invariant base knowledge, then what stage j taught) '
        "after stage i. Read a column downwards to see a cohort being learned and then forgotten.</p>",
        plots.heatmaps([(m.label, m.matrix) for m in done]) if done else "",
        "<h2>Every cohort across stages</h2>",
        '<p class="note">Colour says what a cohort is and which way its line should go: black, base knowledge no stage '
        "touches (should stay up); blue, what stage j taught (should rise and stay); orange dashed, stage j's outdated "
        "objects (should fall); red dotted, what stage j asked to forget (should fall). The marker says the stage.</p>",
        plots.cohort_curves([(m.label, m.curves) for m in done]) if done else "",
        *_training_section(done),
        *_editing_section(done),
        *_unlearning_section(done),
        "<h2>Forgetting and transfer</h2>",
        '<p class="note">FUAR (Jang et al. 2022), BWT and FWT (Lopez-Paz &amp; Ranzato 2017), forgetting '
        "(Chaudhry et al. 2018); definitions in docs/metrics.md.</p>",
        _forgetting_table(done),
        "<h2>Cost</h2>",
        _cost_table(done),
        "<h2>What each method forgot or failed to learn</h2>",
        '<p class="note">Statement probes of the first complete seed. The model&#x27;s answer is its top-ranked '
        "candidate.</p>",
        _drill_down(data.methods),
    ]
    return page("ckl report: " + ", ".join(r.name for r in data.runs), "\n".join(body))
