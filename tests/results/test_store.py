"""The results store keeps every row whole, answers the matrix queries, and shares safely."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from ckl.data.facts import Probe
from ckl.results.store import FILENAME, SCHEMA_VERSION, Outcome, StageInfo, Store


def _probe(pid: str, cohort: str, kind: str = "statement", change: str = "base", stage: int = 0) -> Probe:
    return Probe(
        id=pid, prompt=f"prompt of {pid}", answer=f"answer {pid}", candidates=(f"answer {pid}", "other"),
        kind=kind, cohort=cohort, fact_id=f"fact-{pid}", stage=stage, change=change,
    )


PROBES = [
    _probe("i1", "invariant"),
    _probe("i2", "invariant"),
    _probe("i3", "invariant"),
    _probe("i4", "invariant"),
    _probe("i1p", "invariant", kind="paraphrase"),
    _probe("s1", "stage1", change="learn", stage=1),
    _probe("s2", "stage1", change="learn", stage=1),
    _probe("u1", "stage1", change="update", stage=1),
    _probe("u1q", "stage1", kind="question", change="update", stage=1),
]


def _outcomes(right_em: set[str], right_rank: set[str] | None = None) -> list[Outcome]:
    right_rank = right_em if right_rank is None else right_rank
    return [
        Outcome(p.id, em=p.id in right_em, rank_ok=p.id in right_rank, logprob=-0.5 * i, predicted=f"pred {p.id}")
        for i, p in enumerate(PROBES)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "run" / FILENAME) as s:
        s.add_probes(PROBES)
        yield s


def _write_rows(path: str, method: str, n_rows: int, start=None) -> None:
    """One writer process: records rows 0..n_rows-1 of (method, seed 0), after the `start` barrier."""
    probes = [_probe(f"p{i}", "invariant") for i in range(40)]
    if start is not None:
        start.wait(30)
    with Store(path) as s:
        s.add_probes(probes)
        for row in range(n_rows):
            outcomes = [Outcome(p.id, em=(i + row) % 2 == 0, rank_ok=True, logprob=-1.0, predicted="x")
                        for i, p in enumerate(probes)]
            s.record_row(method, 0, row, outcomes, StageInfo(seconds=0.01, notes={"writer": method}))


def test_outcomes_and_stage_infos_round_trip(store: Store) -> None:
    info = StageInfo(status="ok", seconds=1.5, trainable_params=10, total_params=100, tokens_seen=4096,
                     perplexity=12.25, notes={"not_applied": {"forget": 3}}, peak_memory_mb=512.0)
    store.record_row("lora", 7, 1, _outcomes({"i1", "s1"}, {"i1", "s1", "s2"}), info)

    got = {o["probe_id"]: o for o in store.outcomes("lora", 7, 1)}
    assert list(got) == [p.id for p in PROBES]
    assert got["s1"] == {
        "probe_id": "s1", "em": True, "rank_ok": True, "logprob": -2.5, "predicted": "pred s1",
        "prompt": "prompt of s1", "answer": "answer s1", "cohort": "stage1", "kind": "statement",
        "fact_id": "fact-s1", "stage": 1, "change": "learn",
    }
    assert got["s2"]["em"] is False and got["s2"]["rank_ok"] is True
    assert [o["probe_id"] for o in store.outcomes("lora", 7, 1, cohort="invariant")] == ["i1", "i2", "i3", "i4", "i1p"]

    assert store.stage_infos("lora", 7) == [{
        "row": 1, "status": "ok", "seconds": 1.5, "trainable_params": 10, "total_params": 100,
        "tokens_seen": 4096, "perplexity": 12.25, "notes": {"not_applied": {"forget": 3}}, "peak_memory_mb": 512.0,
    }]
    assert store.stage_infos("lora", 8) == []


def test_probes_are_added_once_and_read_back_whole(store: Store) -> None:
    store.add_probes(PROBES)  # again: no error, no duplicates
    store.add_probes([_probe("i1", "changed-cohort")])  # an existing id keeps its first version
    assert store.probes() == PROBES


def test_accuracy_per_cohort_is_the_mean_over_that_cohorts_probes(store: Store) -> None:
    store.record_row("ft", 0, 0, _outcomes({"i1", "i2", "i3", "i1p"}), StageInfo())
    store.record_row("ft", 0, 1, _outcomes({"i1", "s1", "s2", "u1", "u1q"}), StageInfo())

    assert store.accuracy("ft", 0) == {
        0: {"invariant": 3 / 4, "stage1": 0.0},
        1: {"invariant": 1 / 4, "stage1": 3 / 3},
    }
    assert store.accuracy("ft", 0, kinds=("statement", "paraphrase", "question")) == {
        0: {"invariant": 4 / 5, "stage1": 0.0},
        1: {"invariant": 1 / 5, "stage1": 4 / 4},
    }
    assert store.accuracy("ft", 0, kinds=("question",)) == {0: {"stage1": 0.0}, 1: {"stage1": 1.0}}
    assert store.accuracy("other", 0) == {}


def test_rank_metric_reads_rank_ok_not_exact_match(store: Store) -> None:
    store.record_row("ft", 0, 0, _outcomes(right_em={"i1"}, right_rank={"i1", "i2", "i3", "s1"}), StageInfo())
    assert store.accuracy("ft", 0, metric="em") == {0: {"invariant": 1 / 4, "stage1": 0.0}}
    assert store.accuracy("ft", 0, metric="rank") == {0: {"invariant": 3 / 4, "stage1": 1 / 3}}
    with pytest.raises(ValueError, match="metric"):
        store.accuracy("ft", 0, metric="f1")


def test_accuracy_by_change_separates_learned_from_updated_facts(store: Store) -> None:
    store.record_row("ft", 0, 1, _outcomes({"s1", "u1", "i1"}), StageInfo())
    assert store.accuracy_by_change("ft", 0) == {1: {
        ("invariant", "base"): 1 / 4, ("stage1", "learn"): 1 / 2, ("stage1", "update"): 1.0,
    }}


def test_completed_rows_lists_ok_rows_in_order_and_skips_failed_ones(store: Store) -> None:
    for row in (2, 0, 1):
        store.record_row("ft", 3, row, _outcomes(set()), StageInfo())
    store.record_row("ft", 3, 3, [], StageInfo(status="failed", notes={"error": "loss diverged"}))
    assert store.completed_rows("ft", 3) == [0, 1, 2]
    assert store.completed_rows("ft", 4) == []
    assert [i["status"] for i in store.stage_infos("ft", 3)] == ["ok", "ok", "ok", "failed"]
    assert 3 not in store.accuracy("ft", 3)


def test_runs_are_listed_in_the_order_their_first_row_was_recorded(store: Store) -> None:
    store.record_row("lora", 1, 0, [], StageInfo())
    store.record_row("ewc", 0, 0, [], StageInfo())
    store.record_row("lora", 0, 0, [], StageInfo())
    store.record_row("lora", 1, 0, [], StageInfo())  # re-recorded: keeps its place
    store.record_row("ewc", 0, 1, [], StageInfo())
    assert store.runs() == [("lora", 1), ("ewc", 0), ("lora", 0)]


def test_re_recording_a_row_replaces_it(store: Store) -> None:
    store.record_row("ft", 0, 1, _outcomes({"i1", "i2"}), StageInfo(seconds=9.0, notes={"try": 1}))
    store.record_row("ft", 0, 1, _outcomes({"i3"})[:3], StageInfo(seconds=2.0, notes={"try": 2}))
    now = [(o["probe_id"], o["em"]) for o in store.outcomes("ft", 0, 1)]
    assert now == [("i1", False), ("i2", False), ("i3", True)]
    assert [(i["seconds"], i["notes"]) for i in store.stage_infos("ft", 0)] == [(2.0, {"try": 2})]


def test_a_row_is_all_or_nothing_when_an_outcome_is_bad(store: Store) -> None:
    store.record_row("ft", 0, 1, _outcomes({"i1"}), StageInfo(seconds=1.0))
    before = (store.outcomes("ft", 0, 1), store.stage_infos("ft", 0))
    bad = _outcomes(set())
    bad.insert(4, Outcome("no-such-probe", True, True, 0.0, ""))  # fails half way through the inserts
    with pytest.raises(sqlite3.IntegrityError):
        store.record_row("ft", 0, 1, bad, StageInfo(seconds=2.0))
    with pytest.raises(sqlite3.IntegrityError):
        store.record_row("ft", 0, 2, bad, StageInfo(seconds=2.0))
    assert (store.outcomes("ft", 0, 1), store.stage_infos("ft", 0)) == before
    assert store.outcomes("ft", 0, 2) == [] and store.completed_rows("ft", 0) == [1]
    assert store.runs() == [("ft", 0)]


def test_a_row_is_all_or_nothing_when_the_write_fails_after_the_outcomes(store: Store) -> None:
    store.record_row("ft", 0, 1, _outcomes({"i1"}), StageInfo(seconds=1.0))
    before = (store.outcomes("ft", 0, 1), store.stage_infos("ft", 0))
    # The info row is the last write of record_row: failing there must undo the old row's
    # deletion and all new outcomes.
    other = sqlite3.connect(store.path)
    other.execute("CREATE TRIGGER crash BEFORE INSERT ON rows BEGIN SELECT RAISE(ABORT, 'simulated crash'); END")
    other.commit()
    other.close()
    with pytest.raises(sqlite3.IntegrityError, match="simulated crash"):
        store.record_row("ft", 0, 1, _outcomes({"i2", "i3"}), StageInfo(seconds=2.0))
    with pytest.raises(sqlite3.IntegrityError, match="simulated crash"):
        store.record_row("ft", 0, 2, _outcomes({"i2", "i3"}), StageInfo(seconds=2.0))
    assert (store.outcomes("ft", 0, 1), store.stage_infos("ft", 0)) == before
    assert store.outcomes("ft", 0, 2) == []


def test_a_row_whose_notes_are_not_json_writes_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        store.record_row("ft", 0, 0, _outcomes({"i1"}), StageInfo(notes={"bad": object()}))
    assert store.outcomes("ft", 0, 0) == [] and store.runs() == []


def test_record_row_rejects_a_bad_status_or_row(store: Store) -> None:
    with pytest.raises(ValueError, match="status"):
        store.record_row("ft", 0, 0, [], StageInfo(status="done"))
    with pytest.raises(ValueError, match="row"):
        store.record_row("ft", 0, -1, [], StageInfo())


def test_forgotten_returns_exactly_the_probes_right_before_and_wrong_after(store: Store) -> None:
    store.record_row("ft", 0, 0, _outcomes({"i1", "i2", "i1p", "s1"}, {"i1", "i3"}), StageInfo())
    store.record_row("ft", 0, 2, _outcomes({"i2", "i3", "s1"}, {"i2"}), StageInfo())
    store.record_row("ft", 1, 2, _outcomes(set()), StageInfo())  # another seed: must not leak in

    lost = store.forgotten("ft", 0, "invariant", 0, 2)
    assert [p["probe_id"] for p in lost] == ["i1", "i1p"]
    assert lost[0] == {
        "probe_id": "i1", "em": False, "rank_ok": False, "logprob": 0.0, "predicted": "pred i1",
        "prompt": "prompt of i1", "answer": "answer i1", "cohort": "invariant", "kind": "statement",
        "fact_id": "fact-i1", "stage": 0, "change": "base",
    }
    assert [p["probe_id"] for p in store.forgotten("ft", 0, "invariant", 0, 2, kinds=("statement",))] == ["i1"]
    assert [p["probe_id"] for p in store.forgotten("ft", 0, "invariant", 0, 2, metric="rank")] == ["i1", "i3"]
    assert store.forgotten("ft", 0, "stage1", 0, 2) == []
    assert [p["probe_id"] for p in store.forgotten("ft", 0, "invariant", 2, 0)] == ["i3"]


def test_meta_round_trips_nested_json(tmp_path: Path) -> None:
    config = {"methods": [{"name": "lora", "rank": 8, "alpha": 16.0}], "seeds": [0, 1], "world": None,
              "nested": {"deep": {"list": [1, "two", 3.5, True, None]}}}
    with Store(tmp_path) as s:  # a directory means <directory>/results.sqlite
        s.set_meta("config", config)
        s.set_meta("stream_digest", "abc123")
        s.set_meta("stream_digest", "def456")
        assert s.get_meta("config") == config
        assert s.get_meta("missing", default={"x": 1}) == {"x": 1}
    with Store(tmp_path / FILENAME) as s:  # reopened: everything is still there
        assert s.get_meta("config") == config
        assert s.get_meta("stream_digest") == "def456"
        assert s.get_meta("schema_version") == SCHEMA_VERSION


def test_a_store_from_a_newer_ckl_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.set_meta("schema_version", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="upgrade ckl"):
        Store(tmp_path)


def test_two_processes_writing_one_store_at_once_lose_no_rows(tmp_path: Path) -> None:
    path = str(tmp_path / FILENAME)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)  # both create and write the new store at the same moment
    writers = [ctx.Process(target=_write_rows, args=(path, method, 50, start)) for method in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=60)
    assert [w.exitcode for w in writers] == [0, 0]

    with Store(path) as s:
        assert sorted(s.runs()) == [("a", 0), ("b", 0)]
        for method in ("a", "b"):
            assert s.completed_rows(method, 0) == list(range(50))
            assert all(len(s.outcomes(method, 0, row)) == 40 for row in range(50))
            assert s.accuracy(method, 0)[1] == {"invariant": 0.5}
            assert {i["notes"]["writer"] for i in s.stage_infos(method, 0)} == {method}
        assert len(s.probes()) == 40


def _filled_store(path: Path) -> bytes:
    with Store(path) as s:
        s.add_probes(PROBES)
        for row in range(3):
            s.record_row("naive", 0, row, _outcomes({"i1", "s1"}), StageInfo(seconds=0.1))
    return path.read_bytes()


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"this is not a database\n" * 100,
    "a corrupted page": lambda data: data[:4096] + b"\xff" * 4096 + data[8192:],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_truncated_or_garbage_results_store_is_a_plain_error_and_is_left_as_it_was(tmp_path: Path, damage: str) -> None:
    from ckl.core.errors import InputError

    path = tmp_path / FILENAME
    damaged = DAMAGE[damage](_filled_store(path))
    path.write_bytes(damaged)
    with pytest.raises(InputError, match="not a ckl results store or is damaged") as info:
        Store(path)
    assert "run the same command again" in info.value.message
    assert path.read_bytes() == damaged


def test_another_programs_sqlite_database_is_not_taken_as_a_store(tmp_path: Path) -> None:
    from ckl.core.errors import InputError

    path = tmp_path / "mail.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
    with pytest.raises(InputError, match="other tables: messages"):
        Store(path)
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["messages"]


def test_ckl_show_on_a_damaged_store_exits_2_with_one_message(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ckl.app.cli import app

    run = tmp_path / "run"
    run.mkdir()
    (run / FILENAME).write_bytes(b"garbage" * 1000)
    result = CliRunner().invoke(app, ["show", str(run)])
    assert result.exit_code == 2 and "not a ckl results store or is damaged" in result.output
    assert "Traceback" not in result.output


def test_a_store_with_random_damage_opens_or_is_refused_never_a_crash(tmp_path: Path) -> None:
    import random

    from ckl.core.errors import InputError

    path = tmp_path / FILENAME
    data = _filled_store(path)
    rng = random.Random(18)
    refused = 0
    for _ in range(60):  # most pages of a small store are empty tables' roots: some hits change nothing
        at = rng.randrange(len(data))
        damaged = bytearray(data)
        damaged[at : at + 64] = rng.randbytes(min(64, len(data) - at))
        path.write_bytes(bytes(damaged))
        try:
            Store(path).close()
        except InputError:
            refused += 1
    assert refused > 0
