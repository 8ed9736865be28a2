"""Fault injection against `ckl run`: kills, corrupted checkpoints, truncated stores and two
writers at once, each compared with an uninterrupted run (docs/reliability.md).

Each trial injects one fault (in turn: SIGKILL at a random moment, one flipped bit in a
random checkpoint file with the row it would restore deleted, the results store cut at a
random length, two processes running the same command into one new directory), then does
what a user would (run the same command again; for a store `ckl run` refuses as damaged,
follow its message: move the store and checkpoints away and run again) and compares every
stored outcome with the uninterrupted run's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fault_injection.py [--trials 20] [--seed 0]

A "silent corruption" is a trial where a command exited 0 yet the final results differ.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ckl.results.store import Store  # noqa: E402

CONFIG = {
    "name": "faults",
    "world": {"seed": 1, "people": 12, "stages": 2, "learn_per_stage": 4, "update_per_stage": 4,
              "forget_per_stage": 2, "general_train": 40, "general_heldout": 20, "background_people": 6, "min_probe_word_count": 0},
    "pretrain": {"n_layer": 2, "n_embd": 64, "n_head": 2, "lr": 3.0e-3, "batch_size": 4, "max_epochs": 20, "target": 1.0, "eval_every": 10},
    "eval": {"kinds": ["statement", "question"]},
    "methods": [
        {"name": "naive", "skip": ["forget"], "train": {"epochs": 2, "lr": 3.0e-3, "batch_size": 8}},
        {"name": "replay", "skip": ["forget"], "train": {"epochs": 2, "lr": 3.0e-3, "batch_size": 8}},
    ],
    "seeds": [0],
}
FAULTS = ("kill", "checkpoint bit", "store truncated", "two writers")


def start(config: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "ckl", "run", str(config), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=900)
    return proc.returncode, err


def outcomes(run_dir: Path) -> dict:
    with Store(run_dir / "results.sqlite") as store:
        return {(m, s, row): store.outcomes(m, s, row) for m, s in store.runs() for row in store.completed_rows(m, s)}


def kill(config: Path, out: Path, rng: random.Random, duration: float) -> list[int]:
    proc = start(config, out)
    try:
        proc.wait(timeout=rng.uniform(0.05, 0.95) * duration)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc.stderr.close()
    return [finish(start(config, out))[0]]


def checkpoint_bit(config: Path, out: Path, rng: random.Random, reference: Path) -> list[int]:
    shutil.copytree(reference, out)
    ckpt = rng.choice(sorted(p for p in (out / "checkpoints").iterdir() if p.is_dir()))
    path = rng.choice(sorted(p for p in ckpt.rglob("*") if p.is_file()))
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    from ckl.run.checkpoint import checkpoint_dir

    [label] = [m["name"] for m in CONFIG["methods"] if checkpoint_dir(out, m["name"], 0) == ckpt]
    with sqlite3.connect(out / "results.sqlite") as db:  # its last row, so that the next run must read the checkpoint
        db.execute('DELETE FROM outcomes WHERE method = ? AND "row" = 2', (label,))
        db.execute('DELETE FROM rows WHERE method = ? AND "row" = 2', (label,))
    return [finish(start(config, out))[0]]


def store_truncated(config: Path, out: Path, rng: random.Random, reference: Path) -> list[int]:
    shutil.copytree(reference, out)
    store = out / "results.sqlite"
    with open(store, "r+b") as handle:
        handle.truncate(int(store.stat().st_size * rng.uniform(0.05, 0.95)))
    codes = [finish(start(config, out))[0]]
    if codes[0] == 2:  # refused as damaged: do what the message says
        aside = out.parent / (out.name + ".damaged")
        aside.mkdir()
        store.rename(aside / store.name)
        shutil.move(str(out / "checkpoints"), str(aside / "checkpoints"))
        codes.append(finish(start(config, out))[0])
    return codes


def two_writers(config: Path, out: Path) -> list[int]:
    procs = [start(config, out), start(config, out)]
    return [finish(p)[0] for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ckl_faults_"))
    config = work / "faults.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    began = time.perf_counter()
    code, err = finish(start(config, work / "reference"))
    assert code == 0, err[-2000:]
    duration = time.perf_counter() - began
    expected = outcomes(work / "reference")
    identical = silent = 0
    rows = []
    for trial in range(args.trials):
        fault = FAULTS[trial % len(FAULTS)]
        out = work / f"trial{trial}"
        if fault == "kill":
            codes = kill(config, out, rng, duration)
        elif fault == "checkpoint bit":
            codes = checkpoint_bit(config, out, rng, work / "reference")
        elif fault == "store truncated":
            codes = store_truncated(config, out, rng, work / "reference")
        else:
            codes = two_writers(config, out)
        same = codes[-1] == 0 and outcomes(out) == expected
        identical += same
        silent += (not same) and codes[-1] == 0
        rows.append((trial, fault, codes, same))
        print(f"trial {trial:2d} {fault:<16} exit codes {codes}: {'identical' if same else 'DIFFERENT'}", flush=True)
    print(f"{identical}/{args.trials} identical to the uninterrupted run, {silent} silent corruptions")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
