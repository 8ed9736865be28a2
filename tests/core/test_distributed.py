"""Two CPU processes (gloo) through `accelerate launch` give the single-process results.

The two-process run uses half the per-process batch, so both runs take the same optimiser
steps on the same global batches (ckl.train.batching.shard_batches) with the same
token-mean loss (ckl.train.loop._global_token_mean). What may differ is float32 summation
order: DDP adds two half-batch gradients where one process sums one batch, and each
process scores a different share of the probes in differently composed batches.

Tolerance, per probe after every stage: |log-prob difference| <= 1e-3 and at most 1% of
the exact-match / ranking outcomes flipped; perplexity within 1e-4 relative. Measured on
this test's run (docs/scaling.md): largest log-prob difference 5.4e-5 (naive), 1.6e-5
(replay), 1.3e-5 (ewc), no outcome flipped, so the bound leaves ~20x for other CPUs and
BLAS builds. The mistakes it guards against move log-probs by far more: averaging the
per-process losses plainly instead of by tokens moved them by up to 2.65 and flipped 23
to 31 of 768 outcomes per method (measured once by switching the weighting off).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CPU_CONFIG = ROOT / "examples" / "accelerate" / "cpu-2proc.yaml"
LOGPROB_TOL = 1e-3
FLIP_SHARE = 0.01
PPL_REL_TOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(path: Path, stream_dir: Path, model_dir: Path, batch_size: int) -> Path:
    train = {"epochs": 4, "lr": 2.0e-3, "batch_size": batch_size, "block_size": 64}
    config = {
        "name": "dist",
        "stream": str(stream_dir),
        "model": str(model_dir),
        "eval": {"kinds": ["statement", "question"]},
        "methods": [
            {"name": "naive", "skip": ["forget"], "train": train},
            {"name": "replay", "skip": ["forget"], "train": train, "replay": {"fraction": 0.5}},
            {"name": "ewc", "skip": ["forget"], "train": train, "ewc": {"strength": 100.0, "samples": 32}},
            # diverges in its first step: every process must stop, and the run go on
            {"name": "naive", "label": "exploding", "skip": ["forget"], "train": {**train, "lr": 1.0e30}},
        ],
        "seeds": [0],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _results(run_dir: Path):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        outcomes = {
            (m, s, r, p): (em, rank, lp)
            for m, s, r, p, em, rank, lp in db.execute('SELECT method, seed, "row", probe_id, em, rank_ok, logprob FROM outcomes')
        }
        rows = {(m, s, r): (status, ppl) for m, s, r, status, ppl in db.execute('SELECT method, seed, "row", status, perplexity FROM rows')}
    return outcomes, rows


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.mark.heavy  # started first (tests/conftest.py)
def test_two_processes_match_one(tmp_path, tiny_stream, tiny_model_dir):
    stream_dir = tmp_path / "stream"
    tiny_stream.save(stream_dir)
    one = _config(tmp_path / "one.yaml", stream_dir, tiny_model_dir, batch_size=8)
    two = _config(tmp_path / "two.yaml", stream_dir, tiny_model_dir, batch_size=4)
    single = subprocess.run(
        [sys.executable, "-m", "ckl", "run", str(one), "--out", str(tmp_path / "one")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    # the shipped config: accelerate's torchrun launcher, and with no CUDA device visible each
    # process's Accelerator runs on the CPU with gloo (`--cpu` alone would start 1 process)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
        "--main_process_port", str(_free_port()),
        "-m", "ckl", "run", str(two), "--out", str(tmp_path / "two"),
    ]
    env = _env()
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes even where a GPU exists
    double = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert double.returncode == 0, double.stdout[-2000:] + double.stderr[-3000:]
    assert double.stdout.count("exploding seed 0: stage 1 FAILED (loss became") == 1, "the main process alone reports"

    outcomes_1, rows_1 = _results(tmp_path / "one")
    outcomes_2, rows_2 = _results(tmp_path / "two")
    assert set(outcomes_1) == set(outcomes_2) and len(outcomes_1) > 0
    assert {m for m, *_ in rows_1} == {"naive", "replay", "ewc", "exploding"}
    assert set(rows_1) == set(rows_2)
    for rows in (rows_1, rows_2):
        assert {k: status for k, (status, _) in rows.items() if status != "ok"} == {("exploding", 0, 1): "failed"}
    for method in ("naive", "replay", "ewc"):
        keys = [k for k in outcomes_1 if k[0] == method]
        worst = max(abs(outcomes_1[k][2] - outcomes_2[k][2]) for k in keys)
        assert worst <= LOGPROB_TOL, f"{method}: log-prob differs by {worst:.2e}"
        flips = sum(outcomes_1[k][:2] != outcomes_2[k][:2] for k in keys)
        assert flips <= FLIP_SHARE * len(keys), f"{method}: {flips} of {len(keys)} outcomes differ"
        trained = [k for k in keys if k[2] > 0]
        assert any(abs(outcomes_1[k][2] - outcomes_1[(k[0], k[1], 0, k[3])][2]) > 0.1 for k in trained), "training changed nothing"
    for key, (status, ppl) in rows_1.items():
        if status == "ok":
            assert rows_2[key][1] == pytest.approx(ppl, rel=PPL_REL_TOL)
    assert not list((tmp_path / "two" / "checkpoints").glob("*.new")), "a checkpoint was left half-renamed"


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((ROOT / "examples" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = (str(config.distributed_type).split(".")[-1], config.num_processes)
        if config.deepspeed_config:
            assert (ROOT / config.deepspeed_config["deepspeed_config_file"]).exists()
    assert kinds["cpu-2proc"] == ("MULTI_GPU", 2)
    assert {k for k, _ in kinds.values()} == {"MULTI_GPU", "FSDP", "DEEPSPEED"}
