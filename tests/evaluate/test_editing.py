"""Editing metrics on hand-computed examples (definitions in ckl/evaluate/editing.py)."""

import pytest

from ckl.evaluate.editing import (
    agreement,
    edit_metrics,
    harmonic_mean,
    retention,
    sequential_curve,
)


def o(pid, cohort, kind, em, rank, predicted="x"):
    return {"probe_id": pid, "cohort": cohort, "kind": kind, "em": em, "rank_ok": rank, "predicted": predicted}


BEFORE = [
    o("e1", "stage1", "statement", 0, 0, "old"), o("e2", "stage2", "statement", 0, 0, "old"),
    o("p1", "stage1", "paraphrase", 0, 0), o("p2", "stage2", "paraphrase", 0, 0),
    o("n1", "local1", "statement", 1, 1, "Paris"), o("n2", "local2", "statement", 0, 1, "Rome"),
    o("u1", "invariant", "statement", 1, 1), o("u2", "invariant", "statement", 1, 1),
]
AFTER_1 = [
    o("e1", "stage1", "statement", 1, 1), o("e2", "stage2", "statement", 0, 0),
    o("p1", "stage1", "paraphrase", 0, 1), o("p2", "stage2", "paraphrase", 0, 0),
    o("n1", "local1", "statement", 1, 1, "Paris"), o("n2", "local2", "statement", 0, 1, "Rome"),
    o("u1", "invariant", "statement", 1, 1), o("u2", "invariant", "statement", 1, 1),
]
AFTER_2 = [
    o("e1", "stage1", "statement", 0, 1), o("e2", "stage2", "statement", 1, 1),
    o("p1", "stage1", "paraphrase", 0, 0), o("p2", "stage2", "paraphrase", 1, 1),
    o("n1", "local1", "statement", 0, 0, "Oslo"), o("n2", "local2", "statement", 0, 1, "Rome"),
    o("u1", "invariant", "statement", 1, 1), o("u2", "invariant", "statement", 0, 0),
]


def test_harmonic_mean():
    assert harmonic_mean([1.0, 0.5, 0.5]) == pytest.approx(3 / (1 + 2 + 2))
    assert harmonic_mean([1.0, 0.0, 1.0]) == 0.0
    assert harmonic_mean([1.0, None]) is None


def test_agreement_is_with_the_pre_edit_prediction_not_the_truth():
    before = {"n2": BEFORE[5]}  # the pre-edit model was wrong on n2 (em 0) but predicted "Rome"
    assert agreement([AFTER_2[5]], before) == 1.0


def test_edit_metrics_after_both_batches():
    m = edit_metrics(AFTER_2, BEFORE, 1, 2)
    assert m["edits"] == 2
    assert m["efficacy"] == 0.5 and m["generalization"] == 0.5
    assert m["locality"] == 0.5  # n1 changed its prediction, n2 kept it
    assert m["locality_acc"] == 0.0
    assert (m["es"], m["ps"], m["ns"]) == (1.0, 0.5, 0.5)
    assert m["score"] == pytest.approx(3 / (1 + 2 + 2))


def test_retention_and_sequential_curve():
    assert retention(AFTER_2, BEFORE) == 0.5
    rows = {0: BEFORE, 1: AFTER_1, 2: AFTER_2}
    curve = sequential_curve(rows.__getitem__, 2)
    assert [c["edits"] for c in curve] == [1, 2]
    assert curve[0]["current"]["efficacy"] == 1.0 and curve[0]["earlier"] is None
    assert curve[1]["current"]["efficacy"] == 1.0
    assert curve[1]["earlier"]["efficacy"] == 0.0  # the first batch's edit is lost after the second
    assert curve[1]["earlier"]["es"] == 1.0  # ... though it still ranks first
    assert curve[1]["all"]["efficacy"] == 0.5
    assert (curve[0]["retention"], curve[1]["retention"]) == (1.0, 0.5)
