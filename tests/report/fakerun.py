"""A hand-filled run directory: two methods, two stages, known outcomes, and hostile text
(a fact whose text is a script tag) in prompts, answers, model outputs and a method name."""

from __future__ import annotations

from pathlib import Path

from ckl.data.facts import Probe
from ckl.results.store import Outcome, StageInfo, Store

SCRIPT = "<script>alert(1)</script>"
TITLE_SCRIPT = "<script>document.title='pwned'</script>"
HOSTILE_METHOD = "lora<b>+</b>$x$"


def _p(pid, prompt, answer, kind, cohort, fact, stage, change):
    return Probe(pid, prompt, answer, (answer, "Other"), kind, cohort, fact, stage, change)


PROBES = [
    _p("invariant/a/statement", "Ann lives in", "Oslo", "statement", "invariant", "a", 0, "base"),
    _p("invariant/b/statement", f"{SCRIPT} lives in", SCRIPT, "statement", "invariant", "b", 0, "base"),
    _p("invariant/b/question", "Question: where? Answer:", "Rome", "question", "invariant", "b", 0, "base"),
    _p("stage1/c/statement", "Cid lives in", "Lima", "statement", "stage1", "c", 1, "learn"),
    _p("stage1/d/statement", "Dan works at", TITLE_SCRIPT, "statement", "stage1", "d", 1, "update"),
    _p("stale1/d/statement", "Dan works at", "Acme", "statement", "stale1", "d", 1, "update"),
    _p("forget1/f/statement", "Fay lives in", "Pisa", "statement", "forget1", "f", 1, "forget"),
    _p("stage2/e/statement", "Eve lives in", "Kyiv", "statement", "stage2", "e", 2, "learn"),
]

# em per row, in PROBES order:   a  b  bq c  d  st f  e
FORGETFUL = {0: (1, 1, 1, 0, 0, 1, 1, 0), 1: (1, 0, 1, 1, 1, 0, 1, 0), 2: (0, 0, 1, 0, 1, 1, 1, 1)}
KEEPER = {0: (1, 1, 1, 0, 0, 1, 1, 0), 1: (1, 1, 1, 1, 0, 1, 1, 0), 2: (1, 1, 1, 1, 0, 1, 1, 0)}


def make_run(directory: Path, methods: dict[str, dict[int, tuple]] | None = None, seeds=(0,), unlearners=()) -> Path:
    """Write a run directory whose store holds `methods` (name -> em per row); the
    methods in `unlearners` applied the deletion request, the others left it unapplied."""
    methods = methods or {"naive": FORGETFUL, HOSTILE_METHOD: KEEPER}
    directory.mkdir(parents=True, exist_ok=True)
    with Store(directory / "results.sqlite") as s:
        s.set_meta("T", 2)
        s.set_meta("metric", "em")
        s.add_probes(PROBES)
        for name, table in methods.items():
            for seed in seeds:
                for row, ems in table.items():
                    outcomes = [
                        Outcome(p.id, bool(e), bool(e), -1.0, p.answer if e else (SCRIPT if p.fact_id == "b" else "Other"))
                        for p, e in zip(PROBES, ems)
                    ]
                    info = StageInfo(seconds=1.5 * row, trainable_params=1000 if name == "naive" else 100,
                                     total_params=1000, tokens_seen=500 * row, perplexity=20.0 + row,
                                     notes={"not_applied": {"forget": 1}} if row and name not in unlearners else {})
                    s.record_row(name, seed, row, outcomes, info)
    return directory
