"""The HTML report of one `ckl update` (self-contained, every user string escaped)."""

from __future__ import annotations

from typing import Any

from ckl.report.html import esc, page, table
from ckl.report.plots import before_after
from ckl.app.update.gates import names


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _verdict(report: dict[str, Any]) -> str:
    if report["passed"]:
        return f'<div class="banner ok">All gates passed. Updated model: {esc(report["model_written"])}</div>'
    failed = [g for g in report["gates"] if not g["passed"]]
    why = "; ".join(f"{g['gate']} (measured {_num(g['value'])})" for g in failed) or (report["error"] or "")
    where = (f"it was written to {report['model_written']} for inspection only" if report["model_written"]
             else "it was not written")
    return f'<div class="banner fail">FAILED: {esc(why)}. The updated model is NOT to be shipped; {esc(where)}.</div>'


LIMIT = 200  # rows listed per table; report.json has them all


def _problems(title: str, rows: list[dict[str, Any]]) -> str:
    head = f"<details><summary>{esc(title)}: {len(rows)}</summary>"
    if not rows:
        return head + '<p class="muted">none</p></details>'
    more = f'<p class="muted">showing {LIMIT} of {len(rows)}; all are in report.json</p>' if len(rows) > LIMIT else ""
    rows = rows[:LIMIT]
    body = table(
        ["fact", "prompt", "expected", "model's answer"],
        [[r["fact_id"], r["prompt"], r["expected"],
          r["answer"] + (" (ranked first, but greedy output differs)" if r["ranked_first"] and r["answer"] == r["expected"] else "")]
         for r in rows],
        text_columns=4,
    )
    return head + body + more + "</details>"


def update_page(report: dict[str, Any]) -> str:
    parts = [
        "<h1>ckl update</h1>",
        _verdict(report),
        table(["input model", "method", "seed", "learn", "update", "forget", "corpus documents", "keep-set"],
              [[report["model"], report["method"], report["seed"], report["changes"]["learn"], report["changes"]["update"],
                report["changes"]["forget"], report["changes"].get("corpus", 0), f"{report['keep']['size']} ({report['keep']['source']})"]], text_columns=2),
    ]
    if report["gates"]:
        parts += ["<h2>Gates</h2>", table(
            ["gate", "measures", "value", "result"],
            [[g["gate"], names()[g["name"]], _num(g["value"]), "passed" if g["passed"] else "FAILED"] for g in report["gates"]],
            text_columns=2)]
    if report["measures"]:
        m = report["measures"]
        rows = [(name, m[name]["before"], m[name]["after"]) for name in ("acquisition", "update", "stale", "forget", "keep")
                if m[name]["after"] is not None]
        parts += [
            "<h2>Before and after</h2>",
            '<p class="note">Statement probes, greedy exact match. Acquisition and update should rise, stale and '
            "forget should fall, keep should stay.</p>",
            before_after(rows),
            "<h2>Every probe set</h2>",
            table(["probe set", "form", "probes", "before", "after"],
                  [[cohort, kind, v["n"], _num(v["before"]), _num(v["after"])]
                   for cohort, kinds in report["cohorts"].items() for kind, v in kinds.items()], text_columns=2),
            "<h2>Cost</h2>",
            table(["seconds", "trainable parameters", "total parameters", "tokens seen", "steps"],
                  [[f"{report['cost']['seconds']:.1f}", f"{report['cost']['trainable_params']:,}", f"{report['cost']['total_params']:,}",
                    f"{report['cost']['tokens_seen']:,}", report["cost"]["steps"]]], text_columns=0),
            "<h2>Facts to look at</h2>",
            _problems("keep-set facts forgotten", report["problems"]["forgotten"]),
            _problems("new or updated facts not learned", report["problems"]["not_learned"]),
            _problems("outdated objects still answered", report["problems"]["still_stale"]),
            _problems("facts to forget still answered", report["problems"]["not_forgotten"]),
        ]
    return page("ckl update: " + ("passed" if report["passed"] else "FAILED"), "\n".join(parts))
