"""Everything a report shows, gathered from run directories (their SQLite stores).

Reads only: the store (`ckl.results.store`), the per-method numbers (`ckl.results.summary`) and the
matrix helpers (`ckl.evaluate.metrics`). Nothing here renders; `html.py` and `plots.py`
turn a `ReportData` into a page.

Conventions: the run's own metric (exact match unless the run configured `rank`) on
statement probes, as in `ckl show`. Matrices and cohort curves are means over a method's
complete seeds; the drill-down lists the probes of its first complete seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckl.data import cohorts
from ckl.evaluate.metrics import mean
from ckl.core.errors import InputError
from ckl.results.editing import editing_summary, is_editing_run
from ckl.results.store import FILENAME, Store, metric_column
from ckl.results.summary import summarize
from ckl.results.unlearning import has_forget, summarize_unlearning

KINDS = ("statement",)
DRILL_LIMIT = 200  # probes listed per method and list; the count says how many there are


@dataclass
class RunInfo:
    """One run directory as the report names it."""

    path: str
    name: str
    stages: int
    metric: str
    probes: int
    weak_base: dict | None = None  # the pretrained base missed its target and the run went on (allow_weak_base)
    environments: list[dict] = field(default_factory=list)  # thread count, CPU, versions of every process that added results
    experiment: str | None = None  # the hash of what makes it one experiment (stream, base model, evaluation): ckl-run.json
    study: dict | None = None  # a `ckl study` run: its result (ckl.study.base; question, verdict, numbers, panels)


@dataclass
class MethodReport:
    """One method of one run: its numbers, matrix, cohort curves and drill-down."""

    run: str
    method: str
    label: str  # unique across the report: "method", or "run: method" with several runs
    summary: dict[str, Any]  # ckl.results.summary.summarize entry: means, *_std, seeds, ...
    matrix: list[list[float | None]] | None  # mean over complete seeds, rows 0..T
    curves: dict[str, list[float | None]]  # cohort -> accuracy after each row 0..T
    drill_seed: int | None = None
    forgotten: list[dict[str, Any]] = field(default_factory=list)
    forgotten_total: int = 0
    known_total: int = 0  # statement probes right when they were last taught (the denominator of forgotten_total)
    not_learned: list[dict[str, Any]] = field(default_factory=list)
    not_learned_total: int = 0
    taught_total: int = 0  # the stages' new and changed facts' statement probes (the denominator of not_learned_total)
    editing: list[dict[str, Any]] | None = None  # editing runs: the sequential curve of the first complete seed (ckl.results.editing)
    editing_final: dict[str, Any] | None = None  # editing runs: the final numbers of that seed
    unlearning: dict[str, Any] | None = None  # methods that applied deletions: ckl.results.unlearning means over seeds
    training_curve: list[dict[str, Any]] | None = None  # in-stage curve (train.eval_every) of the first seed that has one: `training_curve`

    @property
    def complete(self) -> bool:
        return self.matrix is not None


@dataclass
class ReportData:
    runs: list[RunInfo]
    methods: list[MethodReport]
    pareto: list[str]  # labels on the retention/acquisition Pareto front


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Labels of the points no other point dominates (higher is better on both axes).

    A point is dominated when another is at least as good on both axes and strictly
    better on one. Ties (identical points) are all on the front. Returned in the order
    of increasing first coordinate.
    """
    front = []
    for label, (x, y) in points.items():
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for other, (ox, oy) in points.items() if other != label
        )
        if not dominated:
            front.append(label)
    return sorted(front, key=lambda k: (points[k][0], -points[k][1]))


def run_store(run_dir: str | Path) -> Path:
    """The results file of a run directory, or an InputError naming the directory."""
    path = Path(run_dir)
    db = path / FILENAME if path.is_dir() else path
    if not db.is_file():
        raise InputError(str(run_dir), None, None, f"no {FILENAME} here; is this a run directory?")
    return db


def _run_names(run_dirs: list[str | Path]) -> list[str]:
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) < len(names):  # two runs called "out": name them by the path given
        names = [str(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # the same run given twice
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name} ({seen[name]})"
    return names


def _mean_matrix(matrices: list[list[list[float | None]]]) -> list[list[float | None]]:
    n = len(matrices[0])
    return [
        [mean([m[i][j] for m in matrices]) for j in range(n)]
        for i in range(n)
    ]


def _curves(store: Store, method: str, seeds: list[int], metric: str, T: int) -> dict[str, list[float | None]]:
    """Cohort -> accuracy at rows 0..T, averaged over seeds (every cohort, stale and
    forget included, unlike the matrix)."""
    per_seed = [store.accuracy(method, s, metric=metric, kinds=KINDS) for s in seeds]
    cohorts = sorted({c for acc in per_seed for row in acc.values() for c in row}, key=_cohort_order)
    return {c: [mean([acc.get(r, {}).get(c) for acc in per_seed]) for r in range(T + 1)] for c in cohorts}


def training_curve(store: Store, method: str, metric: str) -> list[dict[str, Any]] | None:
    """The in-stage curve (`train.eval_every`) of the first seed of `method` that has one,
    on statement probes, on one step axis across stages: the `Store.curve` rows plus
    `global_step` (the steps of earlier stages added) and `seed`. None without curves."""
    seeds = [s for m, s in store.curve_runs() if m == method]
    if not seeds:
        return None
    rows = store.curve(method, seeds[0], metric, kinds=("statement",))
    last: dict[int, int] = {}
    for r in rows:
        last[r["stage"]] = max(last.get(r["stage"], 0), r["step"])
    offset, before = {}, 0
    for stage in sorted(last):
        offset[stage], before = before, before + last[stage]
    return [{**r, "global_step": offset[r["stage"]] + r["step"], "seed": seeds[0]} for r in rows]


def _cohort_order(cohort: str) -> tuple[int, int, str]:
    kind, stage = cohorts.parse(cohort)
    order = (cohorts.INVARIANT, cohorts.STAGE, cohorts.STALE, cohorts.FORGET)
    if kind in order:
        return (stage or 0, order.index(kind), cohort)
    return (10**6, 9, cohort)


def _probe_row(o: dict[str, Any], when: str) -> dict[str, Any]:
    return {
        "fact_id": o["fact_id"], "cohort": o["cohort"], "change": o["change"], "prompt": o["prompt"],
        "answer": o["answer"], "predicted": o["predicted"], "rank_ok": o["rank_ok"], "when": when,
    }


def _drill(store: Store, method: str, seed: int, metric: str, T: int) -> tuple[list[dict], list[dict], int, int]:
    """(forgotten, not learned, known, taught) statement probes of one seed: the two lists
    and their denominators (probes right when last taught; the stages' probes).

    Forgotten: right when it was last taught (row 0 for base knowledge, row j for what
    stage j taught) and wrong after the last stage. Not learned: a stage's new or changed
    fact still wrong right after that stage.
    """
    key = metric_column(metric)
    forgotten = [_probe_row(o, "known before any stage") for o in store.forgotten(method, seed, cohorts.INVARIANT, 0, T, metric, KINDS)]
    known = sum(1 for o in store.outcomes(method, seed, 0, cohort=cohorts.INVARIANT) if o["kind"] in KINDS and o[key])
    not_learned, taught = [], 0
    for j in range(1, T + 1):
        if j < T:
            forgotten += [_probe_row(o, f"known after stage {j}") for o in store.forgotten(method, seed, cohorts.name(cohorts.STAGE, j), j, T, metric, KINDS)]
        stage = [o for o in store.outcomes(method, seed, j, cohort=cohorts.name(cohorts.STAGE, j)) if o["kind"] in KINDS]
        taught += len(stage)
        known += sum(1 for o in stage if o[key]) if j < T else 0
        not_learned += [_probe_row(o, f"after stage {j}") for o in stage if not o[key]]
    return forgotten, not_learned, known, taught


def _experiment_of(run_dir: Path) -> str | None:
    import json

    from ckl.run.rundir import MARKER

    try:
        return json.loads((run_dir / MARKER).read_text()).get("experiment")
    except (OSError, ValueError, AttributeError):
        return None


def gather(run_dirs: list[str | Path], drill: bool = True) -> ReportData:
    """Read every run directory; methods keep the order they ran in. `drill=False`
    skips the per-probe drill-down (the terminal table does not need it).

    Raises:
        InputError: a directory has no results store, or no stage count (an empty run).
    """
    if not run_dirs:
        raise InputError("<runs>", None, None, "give at least one run directory")
    dbs = [run_store(d) for d in run_dirs]
    names = _run_names(list(run_dirs))
    runs, methods = [], []
    for run_dir, db, name in zip(run_dirs, dbs, names):
        with Store(db) as store:
            T = store.get_meta("T")
            if T is None:
                raise InputError(str(run_dir), None, None, "the run has not recorded anything yet")
            metric = store.get_meta("metric", "em")
            runs.append(RunInfo(str(run_dir), name, int(T), metric, len(store.probes()), store.get_meta("weak_base"),
                                store.get_meta("environments") or [], _experiment_of(Path(run_dir)), store.get_meta("study")))
            editing = is_editing_run(store)
            summaries = summarize(store, metric=metric, kinds=KINDS)
            unlearners = [m for m, e in summaries.items() if e["seeds"] and "forget" not in e["not_applied"]]
            forgetting = summarize_unlearning(store, metric, KINDS, unlearners) if unlearners and has_forget(store) else {}
            for method, entry in summaries.items():
                label = method if len(dbs) == 1 else f"{name}: {method}"
                done = [s for s in entry["per_seed"] if s["complete"]]
                report = MethodReport(name, method, label, entry, None, {})
                if done:
                    seeds = [s["seed"] for s in done]
                    report.matrix = _mean_matrix([s["matrix"] for s in done])
                    report.curves = _curves(store, method, seeds, metric, int(T))
                    report.drill_seed = seeds[0]
                if done and editing:
                    summary = editing_summary(store, method, seeds[0])
                    report.editing = summary["curve"] if summary else None
                    report.editing_final = summary["final"] if summary else None
                report.unlearning = forgetting.get(method)
                report.training_curve = training_curve(store, method, metric)
                if done and drill:
                    forgotten, not_learned, report.known_total, report.taught_total = _drill(store, method, seeds[0], metric, int(T))
                    report.forgotten, report.forgotten_total = forgotten[:DRILL_LIMIT], len(forgotten)
                    report.not_learned, report.not_learned_total = not_learned[:DRILL_LIMIT], len(not_learned)
                methods.append(report)
    points = {
        m.label: (m.summary["retention"], m.summary["acquisition"])
        for m in methods
        if m.complete and m.summary.get("retention") is not None and m.summary.get("acquisition") is not None
    }
    return ReportData(runs, methods, pareto_front(points))

