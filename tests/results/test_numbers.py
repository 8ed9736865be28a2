"""The registry of reported numbers: a number registered once, with its compute function,
reaches every surface that shows numbers: `ckl show` (table and Markdown), `ckl compare`,
the HTML report, MLflow, the demo's summary.json and `ckl update`'s gates."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.app.demo import demo_summary
from ckl.app.update.gates import names, parse_gate
from ckl.report import compare_table
from ckl.results import numbers
from ckl.results.numbers import Number, register_number
from ckl.results.store import Store
from ckl.results.summary import summarize
from tests.report.fakerun import make_run


def _forgotten_share(view: numbers.SeedView) -> float:
    # an unlearning number of our own: the share of forget probes answered at row 0
    rows = [o for o in view.store.outcomes(view.method, view.seed, 0) if o["change"] == "forget"]
    return sum(o["em"] for o in rows) / len(rows)


@pytest.fixture
def added():
    new = [
        register_number(Number("hello_metric", "hello col", "learning", "{:.4f}", table=True, help="a test number",
                               compute=lambda view: 0.1234 + view.seed)),
        register_number(Number("goodbye_metric", "goodbye col", "unlearning", "{:.4f}", better="lower", table=True,
                               help="a test number", compute=_forgotten_share)),
        register_number(Number("kept_share", "kept share", "update", gate=True, help="a test gate")),
    ]
    yield new
    for n in new:
        numbers.unregister_number(n.family, n.key)


def test_an_added_number_reaches_every_surface(added, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", unlearners=("naive",))
    with Store(run / "results.sqlite") as store:
        summary = summarize(store)
    assert summary["naive"]["hello_metric"] == pytest.approx(0.1234) and summary["naive"]["hello_metric_std"] == 0.0

    runner = CliRunner()
    from ckl.app import cli

    monkeypatch.setattr(cli.console, "width", 300)  # every column of the wide unlearning table in view
    shown = runner.invoke(app, ["show", str(run), "--no-matrix"])
    assert shown.exit_code == 0, shown.output
    learning, unlearning = shown.output.split("unlearning (docs/unlearning.md)")
    assert "hello" in learning and "0.1234" in learning  # the key table (headers wrap in a narrow terminal)
    assert "goodbye" in unlearning and "1.0000" in unlearning  # the unlearning table: naive applied the deletion
    markdown = runner.invoke(app, ["show", str(run), "--markdown"]).output
    assert "| hello col |" in markdown and "0.1234" in markdown and "goodbye col" in markdown

    table, _, _ = compare_table([run, make_run(tmp_path / "other")])  # what `ckl compare` prints
    column = next(c for c in table.columns if c.header == "hello col")
    assert list(column.cells) == ["0.1234"] * 4

    report = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "hello col" in html and "0.1234" in html
    assert "<h2>Unlearning</h2>" in html and "goodbye col" in html

    with Store(run / "results.sqlite") as store:
        written = demo_summary(store, 1.0)  # summary.json of ckl demo (and, without the demo's extras, of ckl run)
    assert written["methods"]["naive"]["hello_metric"] == pytest.approx(0.1234)
    assert written["unlearning"]["naive"]["goodbye_metric"] == 1.0

    assert "kept_share" in names() and parse_gate("kept_share>=0.5").name == "kept_share"

    pytest.importorskip("mlflow", reason="MLflow is optional: pip install 'ckl[mlflow]' (or mlflow-skinny)")
    from mlflow.tracking import MlflowClient

    from ckl.report.tracking import log_run

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    log_run(run, uri)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    naive = next(r for r in runs if r.info.run_name == "naive seed 0")
    assert naive.data.metrics["hello_metric"] == pytest.approx(0.1234)
    assert naive.data.metrics["unlearning.goodbye_metric"] == 1.0
    parent = next(r for r in runs if r.data.tags.get("ckl.kind") == "run")
    local = client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path))
    assert json.loads(open(local).read())["naive seed 0"]["hello_metric"] == pytest.approx(0.1234)


def test_a_taken_key_or_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="already registered in family 'learning'"):
        register_number(Number("retention", "again", "learning"))
    with pytest.raises(ValueError, match="family must be one of"):
        register_number(Number("x_metric", "x", "nowhere"))
    with pytest.raises(ValueError, match="better must be"):
        register_number(Number("x_metric", "x", "learning", better="up"))
    assert ("learning", "x_metric") not in numbers.REGISTRY


def test_every_number_has_a_label_a_help_and_a_format_that_renders():
    for (family, key), n in numbers.REGISTRY.items():
        assert n.label and n.help, (family, key)
        assert n.format(None) in ("-", "no gain") and n.format(0.5)
