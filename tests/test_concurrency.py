"""Two processes updating one store's records at the same moment lose nothing.

(Rows written by two processes at once: tests/results/test_store.py.)"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from ckl.results.store import FILENAME, Store


def _append(path: str, who: str, n: int, start) -> None:
    with Store(path) as store:
        start.wait()
        for i in range(n):
            store.update_meta("log", lambda log: (log or []) + [f"{who}{i}"])


def _register(path: str, resolved: dict, start) -> None:
    from ckl.run.experiment import _check_same_experiment

    with Store(path) as store:
        start.wait()
        _check_same_experiment(store, resolved, Path(path).parent)


def _run(target, args_per_process) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(args_per_process))
    workers = [ctx.Process(target=target, args=(*args, start)) for args in args_per_process]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * len(workers)


def test_read_modify_write_of_a_record_from_two_processes_keeps_every_change(tmp_path):
    path = str(tmp_path / FILENAME)
    Store(path).close()
    _run(_append, [(path, "a", 40), (path, "b", 40)])
    with Store(path) as store:
        log = store.get_meta("log")
    assert sorted(log) == sorted([f"a{i}" for i in range(40)] + [f"b{i}" for i in range(40)])
    assert [x for x in log if x[0] == "a"] == [f"a{i}" for i in range(40)]  # each process's own order kept


def test_two_runs_adding_methods_to_one_directory_at_once_both_stay_recorded(tmp_path):
    path = str(tmp_path / FILENAME)
    Store(path).close()
    base = {"name": "x", "stream": "s", "model": "m", "seeds": [0]}
    first = {**base, "methods": [{"name": "naive", "label": None}]}
    second = {**base, "methods": [{"name": "replay", "label": None}]}
    _run(_register, [(path, first), (path, second)])
    with Store(path) as store:
        assert sorted(store.get_meta("methods")) == ["naive", "replay"]
