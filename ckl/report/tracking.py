"""Optional MLflow logging of a finished run (`ckl run --mlflow`).

MLflow is imported only inside `log_run`; nothing else in ckl imports it, so without
`--mlflow` it is neither needed nor loaded. Install it with `pip install "ckl[mlflow]"`.

What is logged, read back from the run's results store (so a resumed run logs the same):
    one MLflow run per ckl run directory (the parent): the experiment config as params,
        the HTML report and summary.json as artifacts;
    one nested run per method x seed: the method's options and seed as params, per-stage
        metrics with step = stage (accuracy of every cohort `acc.<cohort>`, perplexity,
        seconds, tokens_seen, trainable_params) and the final numbers (retention,
        acquisition, update, stale, FUAR, ACC, BWT, forgetting, ...) at the last step.
Logging the same run directory again replaces its earlier MLflow runs (they are deleted,
MLflow keeps them in its trash), so re-running `ckl run --mlflow` never duplicates.

Where: the `uri` given, else $MLFLOW_TRACKING_URI, else a local file store `./mlruns`.
MLflow 3 keeps the file store in maintenance mode and refuses it unless
MLFLOW_ALLOW_FILE_STORE=true; ckl sets that for a file store it is asked to use (view it
with `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckl.core.errors import InputError
from ckl.results.store import Store
from ckl.results import numbers
from ckl.results.summary import summarize_seed
from ckl.results.unlearning import has_forget, unlearning_seed

RUN_TAG = "ckl.run_dir"
_MAX_PARAM = 6000  # MLflow's limit on a parameter value
_BATCH = 500  # MLflow accepts at most 1000 metrics and 100 params per batch
_MISSING = 'MLflow is not installed; pip install "ckl[mlflow]" (or mlflow-skinny)'


def require_mlflow() -> None:
    """Fail early, before a long run, when MLflow is missing (without importing it).

    Raises:
        InputError: MLflow is not installed.
    """
    import importlib.util

    try:
        found = importlib.util.find_spec("mlflow") is not None
    except ValueError:  # a module entry without a spec: treat as absent
        found = False
    if not found:
        raise InputError("--mlflow", None, None, _MISSING)


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the given one, $MLFLOW_TRACKING_URI, or `./mlruns`."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return Path("mlruns").resolve().as_uri()
    if "://" not in uri and not uri.startswith("file:"):  # a plain directory
        return Path(uri).resolve().as_uri()
    return uri


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> {"a.b": "value"}; lists and scalars JSON-encoded, cut to MLflow's limit."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return {prefix: text[:_MAX_PARAM]}


def _chunks(items: list, n: int = _BATCH) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def _earlier_runs(client, experiment_id: str, key: str) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        ids += [r.info.run_id for r in page if r.data.tags.get(RUN_TAG) == key]
        token = page.token
        if not token:
            return ids


def _stage_metrics(store: Store, method: str, seed: int, metric: str, now: int, Metric) -> list:
    acc = store.accuracy(method, seed, metric=metric, kinds=("statement",))
    out = []
    for info in store.stage_infos(method, seed):
        row = info["row"]
        values = {f"acc.{cohort}": v for cohort, v in acc.get(row, {}).items()}
        values.update(seconds=info["seconds"], tokens_seen=info["tokens_seen"], trainable_params=info["trainable_params"])
        if info["perplexity"] is not None:
            values["perplexity"] = info["perplexity"]
        out += [Metric(key, float(v), now, row) for key, v in values.items() if v is not None]
    return out


def log_run(run_dir: str | Path, uri: str | None = None, experiment: str | None = None,
            report: str | Path | None = None) -> str:
    """Log a run directory to MLflow; returns the parent MLflow run id.

    Args:
        run_dir: a ckl run directory (with results.sqlite).
        uri: tracking URI (see the module docstring for the default).
        experiment: MLflow experiment name; default the run's config name, else the
            directory name.
        report: an HTML report to attach (e.g. from `ckl.report.write_report`).

    Raises:
        InputError: `run_dir` is not a run directory, or MLflow is not installed.
    """
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise InputError("--mlflow", None, None, _MISSING) from None
    from ckl.report.data import run_store

    run_dir = Path(run_dir)
    db = run_store(run_dir)
    uri = resolve_uri(uri)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    key = str(run_dir.resolve())
    now = int(time.time() * 1000)
    with Store(db) as store:
        config = store.get_meta("config") or {}
        specs = store.get_meta("methods") or {}
        metric = store.get_meta("metric", "em")
        name = experiment or config.get("name") or run_dir.resolve().name
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else client.create_experiment(name)
        for run_id in _earlier_runs(client, experiment_id, key):
            client.delete_run(run_id)
        parent = client.create_run(experiment_id, run_name=run_dir.resolve().name, tags={RUN_TAG: key, "ckl.kind": "run"}).info.run_id
        params = flatten({k: v for k, v in config.items() if k != "methods"})
        for chunk in _chunks([Param(k, v) for k, v in sorted(params.items())], 100):
            client.log_batch(parent, params=chunk)
        summaries = {}
        forgets = has_forget(store)
        for method, seed in store.runs():
            child = client.create_run(
                experiment_id, run_name=f"{method} seed {seed}",
                tags={RUN_TAG: key, "mlflow.parentRunId": parent, "ckl.method": method, "ckl.seed": str(seed)},
            ).info.run_id
            spec = {k: v for k, v in (specs.get(method) or {}).items() if k not in ("label",)}
            child_params = flatten({"method": spec, "seed": seed})
            for chunk in _chunks([Param(k, v) for k, v in sorted(child_params.items())], 100):
                client.log_batch(child, params=chunk)
            metrics = _stage_metrics(store, method, seed, metric, now, Metric)
            summary = summarize_seed(store, method, seed, metric)
            logged = {k: summary.get(k) for k in numbers.keys("learning")}
            if forgets and summary["complete"] and "forget" not in summary["not_applied"]:  # a method that unlearned
                forgot = unlearning_seed(store, method, seed, metric)
                logged |= {f"unlearning.{k}": forgot.get(k) for k in numbers.keys("unlearning")}
            summaries[f"{method} seed {seed}"] = {"complete": summary["complete"], **logged}
            last = max((m.step for m in metrics), default=0)
            metrics += [Metric(k, float(v), now, last) for k, v in logged.items() if v is not None]
            for chunk in _chunks(metrics):
                client.log_batch(child, metrics=chunk)
            client.set_tag(child, "ckl.complete", str(summary["complete"]).lower())
            client.set_terminated(child, "FINISHED" if summary["complete"] else "FAILED")
    with tempfile.TemporaryDirectory() as tmp:  # the run directory is left as it is
        summary_path = Path(tmp) / "summary.json"
        summary_path.write_text(json.dumps(summaries, indent=2, sort_keys=True), encoding="utf-8")
        client.log_artifact(parent, str(summary_path))
    if report is not None:
        client.log_artifact(parent, str(report))
    client.set_terminated(parent, "FINISHED")
    return parent
