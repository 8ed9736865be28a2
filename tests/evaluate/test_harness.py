"""Probes exported as lm-evaluation-harness multiple-choice tasks: the harness's accuracy
on them (argmax of the summed log-likelihood of " " + choice, first of ties) is ckl's rank
metric on the same model."""

import json
import subprocess
import sys

import numpy as np
import torch
import yaml

from ckl.evaluate.harness import export_tasks
from ckl.model.scoring import score_probes


def _harness_acc(model, tokenizer, doc) -> bool:
    """The harness's multiple_choice `acc` for one document, computed the way it documents
    it: one forward pass per choice over context + target_delimiter + choice."""
    ctx = tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"]
    scores = []
    for choice in doc["choices"]:
        cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1].float().log_softmax(-1)
        scores.append(float(logits.gather(1, torch.tensor(cont)[:, None]).sum()))
    return int(np.argmax(scores)) == doc["gold"]


def test_exported_tasks_score_what_ckls_rank_metric_scores(tmp_path, tiny_stream, tiny_model):
    model, tokenizer = tiny_model
    probes = tiny_stream.probes()
    counts = export_tasks(probes, tmp_path / "tasks", prefix="tiny")
    assert set(counts) == {f"tiny_{k}" for k in ("statement", "paraphrase", "question", "extraction")}
    group = yaml.safe_load((tmp_path / "tasks" / "tiny.yaml").read_text())
    assert group["group"] == "tiny" and sorted(group["task"]) == sorted(counts)
    task = yaml.safe_load((tmp_path / "tasks" / "tiny_statement.yaml").read_text())
    assert task["output_type"] == "multiple_choice" and task["dataset_path"] == "json" and task["target_delimiter"] == " "
    docs = [json.loads(line) for line in open(task["dataset_kwargs"]["data_files"]["test"])]
    statements = [p for p in probes if p.kind == "statement"]
    assert len(docs) == counts["tiny_statement"] == len(statements)
    assert all(d["choices"][d["gold"]] == d["answer"] for d in docs)
    ckl = score_probes(model, tokenizer, statements).rank_ok
    harness = [_harness_acc(model, tokenizer, d) for d in docs]
    assert harness == [bool(x) for x in ckl]
    assert sum(harness) > len(harness) // 2  # the taught model ranks most answers first: hits are compared, not only misses


def test_ckl_harness_tasks_from_a_stream(tmp_path, tiny_stream):
    tiny_stream.save(tmp_path / "s")
    r = subprocess.run([sys.executable, "-m", "ckl", "harness-tasks", tmp_path / "s", "--out", tmp_path / "t"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "lm_eval --model hf" in r.stdout and (tmp_path / "t" / "ckl_statement.yaml").exists()
    r = subprocess.run([sys.executable, "-m", "ckl", "harness-tasks", tmp_path / "s", "--out", tmp_path / "t"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2  # never over an existing output


def test_ckl_harness_tasks_from_a_run_uses_its_stream_and_eval_settings(tmp_path, tiny_stream):
    from ckl.run.config import ExperimentConfig, plain

    tiny_stream.save(tmp_path / "s")
    config = ExperimentConfig.from_dict({"stream": str(tmp_path / "s"), "methods": [{"name": "naive"}],
                                         "eval": {"kinds": ["statement", "question"], "max_candidates": 3}})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(plain(config)))
    r = subprocess.run([sys.executable, "-m", "ckl", "harness-tasks", tmp_path / "run", "--out", tmp_path / "t"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "t").glob("*.yaml")) == ["ckl.yaml", "ckl_question.yaml", "ckl_statement.yaml"]
    docs = [json.loads(line) for line in (tmp_path / "t" / "ckl_statement.jsonl").read_text().splitlines()]
    assert max(len(d["choices"]) for d in docs) == 3
