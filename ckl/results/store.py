"""The results store: one SQLite file per run directory (`results.sqlite`).

The runner evaluates every probe after every stage ("row" 0..T, row 0 = before any
stage) for each (method, seed) and records each row as soon as it exists, in one
transaction, so a row is either complete or absent and a re-run resumes after the last
completed row. Per-probe outcomes are kept, not only means, so that a user can ask which
facts were forgotten; the accuracy matrix is a GROUP BY over them.

Several processes may write one store at once (WAL journal, a 30 s busy timeout, and a
few retries with backoff when SQLite still reports the database as locked).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ckl.core.errors import InputError
from ckl.data.facts import Probe

FILENAME = "results.sqlite"
SCHEMA_VERSION = 1
METRICS = {"em": "em", "rank": "rank_ok"}  # metric name -> outcomes column
STATUSES = ("ok", "failed")

_BUSY_TIMEOUT_S = 30.0
_RETRIES = 5
_BACKOFF_S = 0.05

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS probes (
    id         TEXT PRIMARY KEY,
    prompt     TEXT NOT NULL,
    answer     TEXT NOT NULL,
    candidates TEXT NOT NULL,
    kind       TEXT NOT NULL,
    cohort     TEXT NOT NULL,
    fact_id    TEXT NOT NULL,
    stage      INTEGER NOT NULL,
    change     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    method TEXT NOT NULL,
    seed   INTEGER NOT NULL,
    PRIMARY KEY (method, seed)
);
CREATE TABLE IF NOT EXISTS rows (
    method           TEXT NOT NULL,
    seed             INTEGER NOT NULL,
    "row"            INTEGER NOT NULL,
    status           TEXT NOT NULL,
    seconds          REAL NOT NULL,
    trainable_params INTEGER NOT NULL,
    total_params     INTEGER NOT NULL,
    tokens_seen      INTEGER NOT NULL,
    perplexity       REAL,
    peak_memory_mb   REAL,
    notes            TEXT NOT NULL,
    PRIMARY KEY (method, seed, "row")
);
CREATE TABLE IF NOT EXISTS outcomes (
    method    TEXT NOT NULL,
    seed      INTEGER NOT NULL,
    "row"     INTEGER NOT NULL,
    probe_id  TEXT NOT NULL REFERENCES probes(id),
    em        INTEGER NOT NULL,
    rank_ok   INTEGER NOT NULL,
    logprob   REAL,
    predicted TEXT NOT NULL,
    PRIMARY KEY (method, seed, "row", probe_id)
);
CREATE INDEX IF NOT EXISTS probes_by_cohort ON probes (cohort, kind);
CREATE TABLE IF NOT EXISTS curve_points (
    method       TEXT NOT NULL,
    seed         INTEGER NOT NULL,
    stage        INTEGER NOT NULL,
    step         INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    loss         REAL,
    eval_seconds REAL NOT NULL,
    PRIMARY KEY (method, seed, stage, step)
);
CREATE TABLE IF NOT EXISTS curve_outcomes (
    method   TEXT NOT NULL,
    seed     INTEGER NOT NULL,
    stage    INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    probe_id TEXT NOT NULL REFERENCES probes(id),
    em       INTEGER NOT NULL,
    rank_ok  INTEGER,
    logprob  REAL,
    PRIMARY KEY (method, seed, stage, step, probe_id)
);
CREATE TABLE IF NOT EXISTS attacks (
    method TEXT NOT NULL,
    seed   INTEGER NOT NULL,
    "row"  INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (method, seed, "row")
);
"""


@dataclass(frozen=True)
class Outcome:
    """How the model did on one probe after one stage."""

    probe_id: str
    em: bool  # greedy generation matched the answer after normalisation
    rank_ok: bool | None  # the answer had the highest log-likelihood among the candidates (None: not ranked, curve points only)
    logprob: float  # log-likelihood of the answer given the prompt
    predicted: str  # the greedy generation


@dataclass
class CurvePoint:
    """One point of an in-stage curve (`train.eval_every`): the scored probes after
    optimiser step `step` of a stage (step 0: before its first step)."""

    step: int
    epoch: int
    loss: float | None  # the training loss of that step (None before the first)
    eval_seconds: float  # what scoring this point cost
    outcomes: Sequence[Outcome]


@dataclass
class StageInfo:
    """What one row cost and how it went, stored next to its outcomes."""

    status: str = "ok"  # ok | failed
    seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    tokens_seen: int = 0
    perplexity: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. change kinds not applied
    peak_memory_mb: float | None = None


def _is_locked(err: sqlite3.OperationalError) -> bool:
    message = str(err).lower()
    return "locked" in message or "busy" in message


def metric_column(metric: str) -> str:
    """The outcomes column holding a metric ("em" -> em, "rank" -> rank_ok)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return METRICS[metric]


def _kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):  # a bare "statement" would otherwise become its letters
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds must name at least one probe kind, got an empty sequence")
    return kinds


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Store:
    """Results of one run directory: probes, per-probe outcomes per row, stage infos, meta.

    Args:
        path: the SQLite file, created with its parent folders if missing; an existing
            directory means `<directory>/results.sqlite`.

    Raises:
        RuntimeError: the file was written by a newer ckl (higher schema version).
        InputError: the file is not a ckl results store, or is damaged (SQLite's
            `PRAGMA quick_check` fails); nothing is written to it.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if path.exists() and not path.is_file():
            raise InputError(str(path), None, None, "is not a regular file; a results store is an SQLite file")
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
        # write lock up front instead of failing to upgrade a read lock later.
        self._conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            self._check_intact()
            self._open()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            if isinstance(err, sqlite3.OperationalError) and _is_locked(err):
                raise
            raise self._damaged(str(err)) from None
        except UnicodeDecodeError as err:  # a damaged schema page can hold bytes that are not text
            self._conn.close()
            raise self._damaged(f"unreadable schema text: {err}") from None
        except BaseException:
            self._conn.close()
            raise

    def _damaged(self, detail: str) -> InputError:
        return InputError(
            str(self.path), None, None,
            f"is not a ckl results store or is damaged ({detail}). ckl wrote nothing to it. If it is a run's "
            "results.sqlite, move it and that run's checkpoints/ folder away and run the same command again to "
            "recompute, or run into a new --out directory",
        )

    def _check_intact(self) -> None:
        """Refuse a file that is not SQLite, is damaged, or is another program's database,
        before anything is written to it."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise self._damaged(f"an SQLite database with other tables: {', '.join(sorted(tables)[:5])}")
        problems = [r[0] for r in self._conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise self._damaged("; ".join(problems[:3]))

    def _open(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL"))
        # NORMAL is crash-safe under WAL; only a power cut can drop the last commits,
        # and a resumed run recomputes those rows.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._retry(self._create_schema)

    # ------------------------------------------------------------------ plumbing

    def _retry(self, fn: Callable[[], _T]) -> _T:
        for attempt in range(_RETRIES):
            try:
                return fn()
            except sqlite3.OperationalError as err:
                if not _is_locked(err) or attempt == _RETRIES - 1:
                    raise
                time.sleep(_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[sqlite3.Cursor], None]) -> None:
        """Run `fn` in one write transaction, retried whole if the database is locked."""

        def attempt() -> None:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                fn(cur)
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

        self._retry(attempt)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        def attempt() -> list[sqlite3.Row]:
            cur = self._conn.cursor()
            cur.row_factory = sqlite3.Row
            return cur.execute(sql, tuple(params)).fetchall()

        return self._retry(attempt)

    def _create_schema(self) -> None:
        found = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if found:
            version = self.get_meta("schema_version")
            if version is not None and version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has results schema version {version}, this ckl reads up to "
                    f"{SCHEMA_VERSION}; upgrade ckl to read it"
                )

        def create(cur: sqlite3.Cursor) -> None:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (json.dumps(SCHEMA_VERSION),),
            )

        self._write(create)

    def close(self) -> None:
        """Close the connection; further calls raise sqlite3.ProgrammingError."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ------------------------------------------------------------------ meta and probes

    def set_meta(self, key: str, value: Any) -> None:
        """Store any JSON-serialisable value under `key`, replacing an earlier one."""
        text = json.dumps(value, sort_keys=True)
        self._write(
            lambda cur: cur.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )
        )

    def update_meta(self, key: str, update: Callable[[Any], Any]) -> Any:
        """Read, change and write the value under `key` in one write transaction, so that
        two processes updating it at once each build on the other's change.

        Args:
            update: gets the current value (None when absent) and returns the new one; an
                exception it raises leaves the value unchanged and propagates.

        Returns:
            The new value.
        """
        new: list[Any] = []

        def write(cur: sqlite3.Cursor) -> None:
            row = cur.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            value = update(json.loads(row[0]) if row else None)
            cur.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, sort_keys=True)),
            )
            new[:] = [value]

        self._write(write)
        return new[0]

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def add_probes(self, probes: Sequence[Probe]) -> None:
        """Register probes; ids already present are left as they are."""
        params = [
            (p.id, p.prompt, p.answer, json.dumps(list(p.candidates)), p.kind, p.cohort,
             p.fact_id, p.stage, p.change)
            for p in probes
        ]
        self._write(
            lambda cur: cur.executemany(
                "INSERT OR IGNORE INTO probes "
                "(id, prompt, answer, candidates, kind, cohort, fact_id, stage, change) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
        )

    def probes(self) -> list[Probe]:
        """All registered probes, in the order they were added."""
        rows = self._read(
            "SELECT id, prompt, answer, candidates, kind, cohort, fact_id, stage, change "
            "FROM probes ORDER BY rowid"
        )
        return [
            Probe(r["id"], r["prompt"], r["answer"], tuple(json.loads(r["candidates"])), r["kind"],
                  r["cohort"], r["fact_id"], r["stage"], r["change"])
            for r in rows
        ]

    # ------------------------------------------------------------------ writing rows

    def record_row(self, method: str, seed: int, row: int, outcomes: Sequence[Outcome],
                   info: StageInfo) -> None:
        """Write one row (all its outcomes and its info) in one transaction.

        A row already recorded is replaced. On any error nothing of this call is kept
        and an earlier version of the row, if any, stays as it was.

        Raises:
            ValueError: `row` is negative or `info.status` is not ok / failed.
            sqlite3.IntegrityError: an outcome names a probe not added with `add_probes`,
                or two outcomes name the same probe.
        """
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise ValueError(f"row must be an integer >= 0, got {row!r}")
        if info.status not in STATUSES:
            raise ValueError(f"info.status must be one of {', '.join(STATUSES)}, got {info.status!r}")
        seed = int(seed)
        # Everything that can fail in Python happens before the transaction starts.
        outcome_params = [
            (method, seed, row, o.probe_id, int(bool(o.em)), int(bool(o.rank_ok)),
             None if o.logprob is None else float(o.logprob), str(o.predicted))
            for o in outcomes
        ]
        info_params = (
            method, seed, row, info.status, float(info.seconds), int(info.trainable_params),
            int(info.total_params), int(info.tokens_seen),
            None if info.perplexity is None else float(info.perplexity),
            None if info.peak_memory_mb is None else float(info.peak_memory_mb),
            json.dumps(info.notes, sort_keys=True),
        )
        key = (method, seed, row)

        def write(cur: sqlite3.Cursor) -> None:
            cur.execute("INSERT OR IGNORE INTO runs (method, seed) VALUES (?, ?)", (method, seed))
            cur.execute('DELETE FROM outcomes WHERE method = ? AND seed = ? AND "row" = ?', key)
            cur.execute('DELETE FROM rows WHERE method = ? AND seed = ? AND "row" = ?', key)
            cur.executemany(
                'INSERT INTO outcomes (method, seed, "row", probe_id, em, rank_ok, logprob, predicted) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                outcome_params,
            )
            cur.execute(
                'INSERT INTO rows (method, seed, "row", status, seconds, trainable_params, '
                "total_params, tokens_seen, perplexity, peak_memory_mb, notes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                info_params,
            )

        self._write(write)

    def record_attack(self, method: str, seed: int, row: int, result: dict[str, Any]) -> None:
        """Store a relearning attack's result (ckl.run.attack) on the model of `row`."""
        text = json.dumps(result, sort_keys=True)
        self._write(lambda cur: cur.execute(
            'INSERT INTO attacks (method, seed, "row", result) VALUES (?, ?, ?, ?) '
            'ON CONFLICT (method, seed, "row") DO UPDATE SET result = excluded.result',
            (method, int(seed), int(row), text),
        ))

    def record_curve(self, method: str, seed: int, stage: int, points: Sequence[CurvePoint]) -> None:
        """Write one stage's in-stage curve in one transaction, replacing any earlier curve
        of that stage (a stage recomputed after a crash writes its curve again).

        Raises:
            sqlite3.IntegrityError: an outcome names a probe not added with `add_probes`.
        """
        seed, stage = int(seed), int(stage)
        point_params = [
            (method, seed, stage, int(p.step), int(p.epoch),
             None if p.loss is None or p.loss != p.loss else float(p.loss), float(p.eval_seconds))
            for p in points
        ]
        outcome_params = [
            (method, seed, stage, int(p.step), o.probe_id, int(bool(o.em)), None if o.rank_ok is None else int(bool(o.rank_ok)),
             None if o.logprob is None else float(o.logprob))
            for p in points for o in p.outcomes
        ]
        key = (method, seed, stage)

        def write(cur: sqlite3.Cursor) -> None:
            cur.execute("DELETE FROM curve_outcomes WHERE method = ? AND seed = ? AND stage = ?", key)
            cur.execute("DELETE FROM curve_points WHERE method = ? AND seed = ? AND stage = ?", key)
            cur.executemany(
                "INSERT INTO curve_points (method, seed, stage, step, epoch, loss, eval_seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
                point_params,
            )
            cur.executemany(
                "INSERT INTO curve_outcomes (method, seed, stage, step, probe_id, em, rank_ok, logprob) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                outcome_params,
            )

        self._write(write)

    def curve_runs(self) -> list[tuple[str, int]]:
        """(method, seed) pairs that have an in-stage curve, in the order of `runs`."""
        having = {(r["method"], r["seed"]) for r in self._read("SELECT DISTINCT method, seed FROM curve_points")}
        return [run for run in self.runs() if run in having]

    def curve(self, method: str, seed: int, metric: str = "em",
              kinds: Sequence[str] = ("statement",)) -> list[dict[str, Any]]:
        """The in-stage curves of one run, one dict per (stage, step, cohort), ordered by
        stage, step and cohort: stage, step, epoch, loss (training loss at that step),
        eval_seconds, cohort, accuracy (mean of `metric` over the cohort's scored probes
        of `kinds`; None for "rank" where candidates were not scored), nll (mean negative
        log-likelihood of their answers) and n (probes)."""
        column = metric_column(metric)
        kinds = _kinds(kinds)
        rows = self._read(
            f"SELECT c.stage, c.step, q.epoch, q.loss, q.eval_seconds, p.cohort, AVG(c.{column}) AS accuracy, "
            "-AVG(c.logprob) AS nll, COUNT(*) AS n "
            "FROM curve_outcomes c JOIN probes p ON p.id = c.probe_id "
            "JOIN curve_points q ON q.method = c.method AND q.seed = c.seed AND q.stage = c.stage AND q.step = c.step "
            f"WHERE c.method = ? AND c.seed = ? AND p.kind IN ({_marks(len(kinds))}) "
            "GROUP BY c.stage, c.step, p.cohort ORDER BY c.stage, c.step, p.cohort",
            (method, int(seed), *kinds),
        )
        return [dict(r) for r in rows]

    def curve_outcomes(self, method: str, seed: int, stage: int) -> list[dict[str, Any]]:
        """Per-probe points of one stage's curve (a fact's log-probability over steps):
        step, probe_id, em, rank_ok (None where candidates were not scored), logprob,
        cohort, kind, fact_id, ordered by step and probe."""
        rows = self._read(
            "SELECT c.step, c.probe_id, c.em, c.rank_ok, c.logprob, p.cohort, p.kind, p.fact_id "
            "FROM curve_outcomes c JOIN probes p ON p.id = c.probe_id "
            "WHERE c.method = ? AND c.seed = ? AND c.stage = ? ORDER BY c.step, p.rowid",
            (method, int(seed), int(stage)),
        )
        return [self._outcome_dict(r) for r in rows]

    def attacks(self, method: str, seed: int) -> dict[int, dict[str, Any]]:
        """row -> relearning attack result, for one method and seed."""
        rows = self._read('SELECT "row", result FROM attacks WHERE method = ? AND seed = ? ORDER BY "row"', (method, int(seed)))
        return {r["row"]: json.loads(r["result"]) for r in rows}

    # ------------------------------------------------------------------ reading runs

    def completed_rows(self, method: str, seed: int) -> list[int]:
        """Rows recorded with status ok, ascending; a resumed run starts after the last."""
        rows = self._read(
            'SELECT "row" FROM rows WHERE method = ? AND seed = ? AND status = \'ok\' ORDER BY "row"',
            (method, int(seed)),
        )
        return [r["row"] for r in rows]

    def runs(self) -> list[tuple[str, int]]:
        """(method, seed) pairs in the order their first row was recorded."""
        return [(r["method"], r["seed"]) for r in self._read("SELECT method, seed FROM runs ORDER BY rowid")]

    def stage_infos(self, method: str, seed: int) -> list[dict[str, Any]]:
        """One dict per recorded row (any status), ordered by row: row + StageInfo fields."""
        rows = self._read(
            'SELECT "row", status, seconds, trainable_params, total_params, tokens_seen, '
            'perplexity, notes, peak_memory_mb FROM rows WHERE method = ? AND seed = ? ORDER BY "row"',
            (method, int(seed)),
        )
        infos = []
        for r in rows:
            info = dict(r)
            info["notes"] = json.loads(info["notes"])
            infos.append(info)
        return infos

    # ------------------------------------------------------------------ accuracy

    def accuracy(self, method: str, seed: int, metric: str = "em",
                 kinds: Sequence[str] = ("statement",)) -> dict[int, dict[str, float]]:
        """The results matrix: row -> cohort -> mean of `metric` over probes of `kinds`.

        Only rows with status ok count. `metric` is "em" (greedy exact match) or "rank"
        (the answer ranked first among the candidates).
        """
        column = metric_column(metric)
        kinds = _kinds(kinds)
        rows = self._read(
            f'SELECT o."row" AS r, p.cohort AS cohort, AVG(o.{column}) AS mean '
            "FROM outcomes o "
            "JOIN probes p ON p.id = o.probe_id "
            'JOIN rows s ON s.method = o.method AND s.seed = o.seed AND s."row" = o."row" '
            f"WHERE o.method = ? AND o.seed = ? AND s.status = 'ok' AND p.kind IN ({_marks(len(kinds))}) "
            'GROUP BY o."row", p.cohort ORDER BY o."row", p.cohort',
            (method, int(seed), *kinds),
        )
        matrix: dict[int, dict[str, float]] = {}
        for r in rows:
            matrix.setdefault(r["r"], {})[r["cohort"]] = r["mean"]
        return matrix

    def accuracy_by_change(self, method: str, seed: int, metric: str = "em",
                           kinds: Sequence[str] = ("statement",)) -> dict[int, dict[tuple[str, str], float]]:
        """Like `accuracy`, split by the change that made each fact: row -> (cohort, change) -> mean.

        FUAR needs this: learned and updated facts of one stage share a cohort.
        """
        column = metric_column(metric)
        kinds = _kinds(kinds)
        rows = self._read(
            f'SELECT o."row" AS r, p.cohort AS cohort, p.change AS change, AVG(o.{column}) AS mean '
            "FROM outcomes o "
            "JOIN probes p ON p.id = o.probe_id "
            'JOIN rows s ON s.method = o.method AND s.seed = o.seed AND s."row" = o."row" '
            f"WHERE o.method = ? AND o.seed = ? AND s.status = 'ok' AND p.kind IN ({_marks(len(kinds))}) "
            'GROUP BY o."row", p.cohort, p.change ORDER BY o."row", p.cohort, p.change',
            (method, int(seed), *kinds),
        )
        matrix: dict[int, dict[tuple[str, str], float]] = {}
        for r in rows:
            matrix.setdefault(r["r"], {})[(r["cohort"], r["change"])] = r["mean"]
        return matrix

    # ------------------------------------------------------------------ drill-downs

    def outcomes(self, method: str, seed: int, row: int, cohort: str | None = None) -> list[dict[str, Any]]:
        """Per-probe outcomes of one row with the probe's fields, in probe order.

        Each dict: probe_id, em, rank_ok, logprob, predicted, prompt, answer, cohort,
        kind, fact_id, stage, change.
        """
        sql = (
            "SELECT o.probe_id, o.em, o.rank_ok, o.logprob, o.predicted, p.prompt, p.answer, "
            "p.cohort, p.kind, p.fact_id, p.stage, p.change "
            "FROM outcomes o JOIN probes p ON p.id = o.probe_id "
            'WHERE o.method = ? AND o.seed = ? AND o."row" = ?'
        )
        params: list[Any] = [method, int(seed), row]
        if cohort is not None:
            sql += " AND p.cohort = ?"
            params.append(cohort)
        return [self._outcome_dict(r) for r in self._read(sql + " ORDER BY p.rowid", params)]

    def forgotten(self, method: str, seed: int, cohort: str, row_from: int, row_to: int,
                  metric: str = "em", kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Probes of `cohort` right at `row_from` and wrong at `row_to`, in probe order.

        Each dict has the probe's fields and the outcome at `row_to` (as in `outcomes`).
        `kinds` restricts the probe kinds; None means all.
        """
        column = metric_column(metric)
        sql = (
            "SELECT b.probe_id, b.em, b.rank_ok, b.logprob, b.predicted, p.prompt, p.answer, "
            "p.cohort, p.kind, p.fact_id, p.stage, p.change "
            "FROM outcomes a "
            'JOIN outcomes b ON b.method = a.method AND b.seed = a.seed AND b."row" = ? '
            "AND b.probe_id = a.probe_id "
            "JOIN probes p ON p.id = a.probe_id "
            f'WHERE a.method = ? AND a.seed = ? AND a."row" = ? AND p.cohort = ? '
            f"AND a.{column} = 1 AND b.{column} = 0"
        )
        params: list[Any] = [row_to, method, int(seed), row_from, cohort]
        if kinds is not None:
            kinds = _kinds(kinds)
            sql += f" AND p.kind IN ({_marks(len(kinds))})"
            params.extend(kinds)
        return [self._outcome_dict(r) for r in self._read(sql + " ORDER BY p.rowid", params)]

    @staticmethod
    def _outcome_dict(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        d["em"] = bool(d["em"])
        d["rank_ok"] = None if d["rank_ok"] is None else bool(d["rank_ok"])  # None: a curve point without candidates
        return d
