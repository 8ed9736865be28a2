"""`ckl run --mlflow`: params, per-stage metrics and the report reach MLflow's local file
store; without the flag MLflow is never imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from ckl.app.cli import app


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_stream, tiny_model_dir):
    d = tmp_path_factory.mktemp("tracking")
    tiny_stream.save(d / "stream")
    spec = {
        "name": "tracked", "stream": str(d / "stream"), "model": str(tiny_model_dir), "seeds": [0],
        "methods": [{"name": "naive", "skip": ["forget"], "train": {"epochs": 2, "lr": 3e-3}}],
        "eval": {"kinds": ["statement"]},
    }
    (d / "exp.yaml").write_text(yaml.safe_dump(spec))
    return d


def test_without_the_flag_mlflow_is_never_imported(config):
    code = (
        "import sys\n"
        "from ckl.app.cli import app\n"
        f"for args in (['run', {str(config / 'exp.yaml')!r}, '--out', {str(config / 'run')!r}],\n"
        f"             ['report', {str(config / 'run')!r}, '-o', {str(config / 'r.html')!r}],\n"
        f"             ['compare', {str(config / 'run')!r}]):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (config / "r.html").exists()


def test_mlflow_gets_params_stage_metrics_and_the_report(config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is optional: pip install 'ckl[mlflow]' (or mlflow-skinny)")
    from mlflow.tracking import MlflowClient

    from ckl.report.tracking import log_run

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    result = CliRunner().invoke(app, ["run", str(config / "exp.yaml"), "--out", str(config / "run"), "--mlflow", "--mlflow-uri", uri])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("ckl.kind") == "run")
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert child.info.run_name == "naive seed 0" and child.info.status == "FINISHED"
    assert parent.data.params["eval.kinds"] == '["statement"]'
    assert child.data.params["method.train.epochs"] == "2" and child.data.params["seed"] == "0"
    history = client.get_metric_history(child.info.run_id, "acc.invariant")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
    assert 0.0 <= child.data.metrics["retention"] <= 1.5 and "perplexity" in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "summary.json"} <= artifacts

    log_run(config / "run", uri)  # logging the same run again replaces, never duplicates
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_a_missing_mlflow_is_a_clear_message(config, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    result = CliRunner().invoke(app, ["run", str(config / "exp.yaml"), "--out", str(config / "run"), "--mlflow",
                                      "--mlflow-uri", (tmp_path / "m").as_uri()])
    assert result.exit_code == 2 and "MLflow is not installed" in result.output
