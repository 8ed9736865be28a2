"""What the report shows, read from a hand-filled store whose outcomes are known."""

import pytest

from ckl.core.errors import InputError
from ckl.report.data import gather, pareto_front
from tests.report.fakerun import HOSTILE_METHOD, SCRIPT, make_run


def test_pareto_front_keeps_only_methods_no_other_beats_on_both_axes():
    points = {"a": (0.9, 0.2), "b": (0.5, 0.8), "c": (0.4, 0.7), "d": (0.9, 0.1), "e": (0.2, 0.9), "twin": (0.5, 0.8)}
    # c is beaten by b on both; d by a (same retention, less acquisition); twins are both kept
    assert pareto_front(points) == ["e", "b", "twin", "a"]
    assert pareto_front({}) == []


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return gather([make_run(tmp_path_factory.mktemp("run"))])


def test_matrix_and_cohort_curves_follow_the_stored_outcomes(data):
    naive = data.methods[0]
    assert naive.label == "naive" and naive.complete
    # invariant statements (a, b): 1, 0.5, 0 ; stage1 (c, d): 0, 1, 0.5 ; stage2 (e): 0, 0, 1
    assert naive.matrix == [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.5, 1.0]]
    assert naive.curves["stale1"] == [1.0, 0.0, 1.0]  # the outdated object came back
    assert naive.curves["forget1"] == [1.0, 1.0, 1.0]
    assert list(naive.curves)[:2] == ["invariant", "stage1"]


def test_drill_down_lists_forgotten_and_unlearned_facts_with_the_wrong_answer(data):
    naive = {m.method: m for m in data.methods}["naive"]
    forgotten = {(r["fact_id"], r["when"]): r for r in naive.forgotten}
    # a and b were known before any stage and are wrong at the end; c was learned in stage 1 and lost
    assert set(forgotten) == {("a", "known before any stage"), ("b", "known before any stage"), ("c", "known after stage 1")}
    assert forgotten[("a", "known before any stage")]["predicted"] == "Other"
    assert forgotten[("b", "known before any stage")]["prompt"] == f"{SCRIPT} lives in"
    assert naive.forgotten_total == 3 and naive.not_learned == []
    keeper = {m.method: m for m in data.methods}[HOSTILE_METHOD]
    assert [(r["fact_id"], r["when"]) for r in keeper.not_learned] == [("d", "after stage 1"), ("e", "after stage 2")]
    assert keeper.forgotten == []


def test_retention_acquisition_front_and_labels_across_runs(tmp_path):
    one, two = make_run(tmp_path / "one"), make_run(tmp_path / "two", methods={"replay": {0: (1,) * 8, 1: (1,) * 8, 2: (1,) * 8}})
    data = gather([one, two])
    assert [m.label for m in data.methods] == ["one: naive", f"one: {HOSTILE_METHOD}", "two: replay"]
    assert data.pareto == ["two: replay"]  # retention 1 and acquisition 1 beat both


def test_a_directory_without_results_is_a_clear_input_error(tmp_path):
    with pytest.raises(InputError, match="no results.sqlite here"):
        gather([tmp_path])
    assert not (tmp_path / "results.sqlite").exists()  # nothing created by looking


def test_an_unfinished_method_is_listed_as_incomplete_and_left_out_of_the_plots(tmp_path):
    from ckl.report.html import report_page
    from ckl.results.store import StageInfo, Store

    run = make_run(tmp_path / "run")
    with Store(run / "results.sqlite") as store:
        store.record_row("halfway", 0, 0, [], StageInfo())
    data = gather([run])
    halfway = {m.method: m for m in data.methods}["halfway"]
    assert not halfway.complete and halfway.summary["incomplete_seeds"] == [0]
    assert "halfway" not in data.pareto
    page = report_page(data)
    assert "<td class=\"text\">halfway</td><td>incomplete</td>" in page
    assert page.count("<svg") == 3
