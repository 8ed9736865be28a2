"""The report file: self-contained, escaped, deterministic; `ckl report` and `ckl compare`."""

import re

import pytest
from typer.testing import CliRunner

from ckl.app.cli import app
from ckl.report import write_report
from ckl.report.plots import heatmaps
from tests.report.fakerun import HOSTILE_METHOD, make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def html(run_dir, tmp_path_factory):
    return write_report([run_dir], tmp_path_factory.mktemp("out") / "r.html").read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(html):
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)  # no CDN, nothing fetched
    assert "@import" not in html and "url(http" not in html
    assert "<script" not in html.lower()
    assert "default-src 'none'" in html  # the CSP forbids scripts and external loads
    assert html.count("<svg") == 3  # Pareto, heatmaps, cohort curves


def _table_after(html: str, heading: str) -> list[list[str]]:
    """The rows (cell texts) of the first table after `heading`."""
    part = html[html.index(heading):]
    body = part[part.index("<tbody>"):part.index("</tbody>")]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]


def test_every_section_is_there_with_the_runs_numbers(html):
    for heading in ("Methods at a glance", "Retention against acquisition", "Results matrix per method",
                    "Every cohort across stages", "Forgetting and transfer", "Cost", "What each method forgot"):
        assert heading in html
    # The key table shows what the fake run's outcomes give (tests/report/fakerun.py):
    # naive knew both invariant facts at row 0 and neither at row 2 (retention 0), learned
    # c but not e (acquired 0.5), got d's new object (updated 1); the keeper kept both.
    rows = {r[0]: r for r in _table_after(html, "Methods at a glance")}
    assert rows["naive"][1:4] == ["0.000", "0.500", "1.000"]
    assert rows["lora&lt;b&gt;+&lt;/b&gt;$x$"][1:4] == ["1.000", "0.500", "0.000"]
    cost = {r[0]: r for r in _table_after(html, "<h2>Cost</h2>")}
    assert cost["naive"][1:4] == ["4.5", "1,000", "1,500"]  # seconds, trainable parameters, tokens seen
    assert "Unlearning" not in html  # no method applied the deletion request: no unlearning section


def test_a_method_that_unlearned_gets_the_unlearning_section(tmp_path):
    page = write_report([make_run(tmp_path / "run", unlearners=("naive",))], tmp_path / "r.html").read_text(encoding="utf-8")
    rows = {r[0]: r for r in _table_after(page, "<h2>Unlearning</h2>")}
    assert set(rows) == {"naive"}  # the other method left the request unapplied
    # forget before 1.000 and after 1.000 (naive still answers Fay's city), floor 0.000 (e unknown before stage 2)
    assert rows["naive"][1:5] == ["1.000", "1.000", "0.000", "0.00"]


def test_user_strings_are_escaped_in_tables_and_in_svg_text(html):
    assert "<b>" not in html and "&lt;b&gt;+&lt;/b&gt;" in html  # the method name, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    svg_text = " ".join(re.findall(r"<text[^>]*>(.*?)</text>", html, flags=re.S))
    assert "lora&lt;b&gt;+&lt;/b&gt;$x$" in svg_text  # a literal "$", not mathtext


def test_plots_are_deterministic_and_their_ids_do_not_collide():
    a = heatmaps([("m", [[1.0, 0.0], [0.5, 1.0]])], prefix="one")
    assert a == heatmaps([("m", [[1.0, 0.0], [0.5, 1.0]])], prefix="one")
    ids = re.findall(r'id="([^"]+)"', a)
    assert ids and all(i.startswith("one-") for i in ids)
    assert not re.findall(r'url\(#(?!one-)', a)


def test_report_command_writes_the_file_and_refuses_a_non_run(run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").count("<svg") == 3
    bad = runner.invoke(app, ["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")])
    assert bad.exit_code == 2 and "no results.sqlite" in bad.output
    assert not (tmp_path / "x.html").exists()


def test_compare_prints_the_key_table_of_several_runs(run_dir, tmp_path):
    other = make_run(tmp_path / "other", methods={"replay": {0: (1,) * 8, 1: (1,) * 8, 2: (1,) * 8}})
    result = CliRunner().invoke(app, ["compare", str(run_dir), str(other)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "other: replay" in result.output and f"{run_dir.name}: naive" in result.output
    assert HOSTILE_METHOD in result.output  # "[...]"-free names print literally; markup is escaped
    assert "Pareto front of retention and acquisition: other: replay" in result.output


def test_compare_warns_when_the_runs_are_different_experiments(tmp_path):
    from ckl.report import compare_table
    from ckl.run.rundir import MARKER

    a, b, c = (make_run(tmp_path / name) for name in ("a", "b", "c"))
    for run, experiment in ((a, "e1"), (b, "e1"), (c, "e2")):
        (run / MARKER).write_text(f'{{"format": "ckl-run", "version": 1, "experiment": "{experiment}"}}')
    assert compare_table([a, b])[2] is None  # one experiment: no warning
    assert "not one experiment" in compare_table([a, c])[2]
    result = CliRunner().invoke(app, ["compare", str(a), str(c)])
    assert result.exit_code == 0 and "warning: these runs are not one experiment" in result.output


def test_counts_have_denominators_and_perplexity_its_base(html):
    # tests/report/fakerun.py: naive knew both invariant facts at row 0 and 2 of the 3 stage
    # facts right after their stage, and lost 3 of those 4 by the end; the stages taught 3
    summaries = re.findall(r"<summary>(.*?)</summary>", html)
    assert summaries[0] == "naive: forgot 3 of the 4 facts it knew when last taught, did not learn 0 of the 3 the stages taught (seed 0)"
    assert "ppl (base 20.00)" in re.findall(r"<th[^>]*>(ppl[^<]*)</th>", html)  # every method starts from perplexity 20


def test_the_cohort_plot_says_what_each_colour_means_once():
    from ckl.report.plots import cohort_curves

    curves = {"invariant": [1.0, 0.5, 0.4], "stage1": [0.0, 0.9, 0.7], "stale1": [1.0, 0.2, 0.1], "forget1": [1.0, 0.3, 0.2], "stage2": [0.0, 0.1, 0.8]}
    svg = cohort_curves([("a", curves), ("b", curves)])
    assert svg.count("should stay up") == 1 and svg.count("should fall") == 2  # one figure legend, not one per panel
    assert "stage 1" in svg and "stage 2" in svg  # markers name the stage
