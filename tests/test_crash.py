"""A run killed with SIGKILL at random points and started again with the same command ends
with exactly the results of an uninterrupted run.

The experiment builds its world and pretrains its base model itself, so the kills can land
in world building, pretraining, training, checkpointing, evaluation or a store write. The
kill times are drawn (seeded) from the uninterrupted run's own duration.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ckl.results.store import Store
from ckl.results import numbers
from ckl.results.summary import summarize

ROOT = Path(__file__).resolve().parents[1]
KILLS = 3
TIMING = {"seconds", "seconds_std"}  # wall time legitimately differs between runs


def _experiment(path: Path) -> Path:
    config = {
        "name": "crash",
        "world": {"seed": 1, "people": 12, "stages": 2, "learn_per_stage": 4, "update_per_stage": 4,
                  "forget_per_stage": 2, "general_train": 40, "general_heldout": 20},
        "pretrain": {"n_layer": 2, "n_embd": 64, "n_head": 2, "lr": 3.0e-3, "batch_size": 4,
                     "max_epochs": 10, "target": 1.0, "eval_every": 5},
        "eval": {"kinds": ["statement", "question"]},
        "methods": [
            {"name": "naive", "skip": ["forget"], "train": {"epochs": 2, "lr": 3.0e-3, "batch_size": 8}},
            {"name": "replay", "skip": ["forget"], "train": {"epochs": 2, "lr": 3.0e-3, "batch_size": 8}},
        ],
        "seeds": [0],
        "allow_weak_base": True,  # 10 epochs on purpose (the resume is under test): the base misses its target
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _start(config: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "ckl", "run", str(config), "--out", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-3000:]


def _results(run_dir: Path):
    with Store(run_dir / "results.sqlite") as store:
        outcomes = {
            (m, s, row): store.outcomes(m, s, row)
            for m, s in store.runs() for row in store.completed_rows(m, s)
        }
        summary = {
            method: {k: v for k, v in entry.items() if k.removesuffix("_std") in numbers.keys("learning") and k not in TIMING}
            for method, entry in summarize(store).items()
        }
    return outcomes, summary


@pytest.mark.heavy  # started first (tests/conftest.py)
def test_a_run_killed_at_random_points_resumes_to_identical_results(tmp_path):
    config = _experiment(tmp_path / "crash.yaml")
    start = time.perf_counter()
    _finish(_start(config, tmp_path / "uninterrupted"))
    duration = time.perf_counter() - start

    rng = random.Random(6)
    killed = []
    for _ in range(KILLS):
        at = rng.uniform(0.1, 0.6) * duration
        proc = _start(config, tmp_path / "killed")
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed.append(round(at, 1))
        else:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            break  # it finished before the kill: nothing left to interrupt
        finally:
            proc.stderr.close()
    assert len(killed) >= 2, f"only {len(killed)} kill(s) landed before the run finished"
    _finish(_start(config, tmp_path / "killed"))  # the same command, to completion

    expected_outcomes, expected_summary = _results(tmp_path / "uninterrupted")
    outcomes, summary = _results(tmp_path / "killed")
    assert set(outcomes) == set(expected_outcomes) and len(outcomes) == 2 * 3  # 2 methods x rows 0..2
    assert outcomes == expected_outcomes, f"killed at {killed} s"
    assert summary == expected_summary and summary["replay"]["acquisition"] is not None
