"""Metrics against hand-computed matrices; expected values carry their arithmetic."""

from __future__ import annotations

import math

import pytest

from ckl.evaluate.metrics import (
    StageGain,
    acc,
    bwt,
    cohort_matrix,
    domain_forgetting,
    domain_gain,
    domain_perplexity,
    format_fuar,
    forgetting,
    forgetting_per_cohort,
    fuar,
    fuar_stages,
    fwt,
    mean,
    perplexity_change,
    plasticity,
    retention,
    summary_metrics,
)

# T = 2. Rows: before any stage, after stage 1, after stage 2.
# Columns: invariant, stage1, stage2.
R3 = [
    [0.50, 0.10, 0.20],
    [0.45, 0.80, 0.30],
    [0.40, 0.60, 0.90],
]

# T = 3, all values distinct so that an off-by-one index gives a different answer.
R4 = [
    [0.60, 0.05, 0.10, 0.15],
    [0.58, 0.70, 0.12, 0.20],
    [0.55, 0.75, 0.80, 0.25],
    [0.45, 0.65, 0.40, 0.90],
]

# T = 1: only ACC, plasticity and retention are defined.
R2 = [
    [0.50, 0.20],
    [0.40, 0.70],
]


# ---------------------------------------------------------------------------- ACC


def test_acc_averages_the_last_row_over_taught_cohorts():
    assert acc(R3) == pytest.approx(0.75)  # (R[2][1] + R[2][2]) / 2 = (0.60 + 0.90) / 2
    assert acc(R4) == pytest.approx(0.65)  # (0.65 + 0.40 + 0.90) / 3 = 1.95 / 3


def test_acc_is_defined_for_a_single_stage():
    assert acc(R2) == pytest.approx(0.70)  # R[1][1] / 1


# ---------------------------------------------------------------------------- BWT


def test_bwt_is_negative_when_earlier_stages_are_forgotten():
    assert bwt(R3) == pytest.approx(-0.20)  # (R[2][1] - R[1][1]) / 1 = 0.60 - 0.80
    # ((R[3][1] - R[1][1]) + (R[3][2] - R[2][2])) / 2 = ((0.65 - 0.70) + (0.40 - 0.80)) / 2
    #   = (-0.05 - 0.40) / 2
    assert bwt(R4) == pytest.approx(-0.225)


def test_bwt_is_positive_when_later_stages_help_earlier_cohorts():
    R = [
        [0.5, 0.1, 0.1],
        [0.5, 0.6, 0.1],
        [0.5, 0.7, 0.8],
    ]
    assert bwt(R) == pytest.approx(0.1)  # (0.7 - 0.6) / 1


def test_bwt_is_undefined_with_a_single_stage():
    assert bwt(R2) is None


# ---------------------------------------------------------------------------- FWT


def test_fwt_compares_accuracy_just_before_a_stage_with_the_base_model():
    assert fwt(R3) == pytest.approx(0.10)  # (R[1][2] - R[0][2]) / 1 = 0.30 - 0.20
    # ((R[1][2] - R[0][2]) + (R[2][3] - R[0][3])) / 2 = ((0.12 - 0.10) + (0.25 - 0.15)) / 2
    #   = (0.02 + 0.10) / 2
    assert fwt(R4) == pytest.approx(0.06)


def test_fwt_is_undefined_with_a_single_stage():
    assert fwt(R2) is None


# ---------------------------------------------------------------------------- Forgetting


def test_forgetting_per_cohort_measures_drop_from_best_intermediate_accuracy():
    # f_1 = R[1][1] - R[2][1] = 0.80 - 0.60
    assert forgetting_per_cohort(R3) == pytest.approx([0.20])
    assert forgetting_per_cohort(R4) == pytest.approx(
        [
            0.10,  # f_1 = max(R[1][1], R[2][1]) - R[3][1] = max(0.70, 0.75) - 0.65
            0.40,  # f_2 = max(R[1][2], R[2][2]) - R[3][2] = max(0.12, 0.80) - 0.40
        ]
    )


def test_forgetting_averages_per_cohort_forgetting_and_differs_from_minus_bwt():
    assert forgetting(R3) == pytest.approx(0.20)  # f_1 / 1
    assert forgetting(R4) == pytest.approx(0.25)  # (0.10 + 0.40) / 2; -BWT is 0.225


def test_forgetting_max_runs_over_all_intermediate_rows_as_defined():
    # f_j = max_{l in 1..T-1} R[l][j] - R[T][j]: row 1 counts for cohort 2 even though
    # stage 2 had not yet run; row 0 never counts.
    R = [
        [0.5, 0.9, 0.9, 0.1],
        [0.5, 0.3, 0.6, 0.1],
        [0.5, 0.4, 0.5, 0.1],
        [0.5, 0.2, 0.2, 0.1],
    ]
    # f_1 = max(0.3, 0.4) - 0.2 = 0.2; f_2 = max(0.6, 0.5) - 0.2 = 0.4
    assert forgetting_per_cohort(R) == pytest.approx([0.2, 0.4])


def test_forgetting_is_negative_when_a_cohort_ends_above_its_best():
    R = [
        [0.5, 0.1, 0.1],
        [0.5, 0.6, 0.1],
        [0.5, 0.7, 0.8],
    ]
    assert forgetting(R) == pytest.approx(-0.1)  # 0.6 - 0.7, not clipped at 0


def test_forgetting_is_undefined_with_a_single_stage():
    assert forgetting_per_cohort(R2) == []
    assert forgetting(R2) is None


# ---------------------------------------------------------------------------- Plasticity


def test_plasticity_averages_accuracy_right_after_each_stage():
    assert plasticity(R3) == pytest.approx(0.85)  # (R[1][1] + R[2][2]) / 2 = (0.80 + 0.90) / 2
    assert plasticity(R4) == pytest.approx(0.80)  # (0.70 + 0.80 + 0.90) / 3 = 2.40 / 3
    assert plasticity(R2) == pytest.approx(0.70)  # R[1][1]


# ---------------------------------------------------------------------------- Retention


def test_retention_is_final_over_initial_invariant_accuracy():
    assert retention(R3) == pytest.approx(0.80)  # R[2][0] / R[0][0] = 0.40 / 0.50
    assert retention(R4) == pytest.approx(0.75)  # R[3][0] / R[0][0] = 0.45 / 0.60
    assert retention(R2) == pytest.approx(0.80)  # 0.40 / 0.50


def test_retention_is_undefined_when_base_accuracy_is_zero():
    R = [
        [0.0, 0.1],
        [0.3, 0.7],
    ]
    assert retention(R) is None


def test_retention_can_exceed_one_when_base_accuracy_rises():
    R = [
        [0.4, 0.1],
        [0.5, 0.7],
    ]
    assert retention(R) == pytest.approx(1.25)  # 0.5 / 0.4


# ---------------------------------------------------------------------------- Summary


def test_summary_metrics_returns_every_matrix_metric_by_name():
    summary = summary_metrics(R4)
    assert set(summary) == {"acc", "bwt", "fwt", "forgetting", "plasticity", "retention"}
    assert summary == pytest.approx(
        {
            "acc": 0.65,
            "bwt": -0.225,
            "fwt": 0.06,
            "forgetting": 0.25,
            "plasticity": 0.80,
            "retention": 0.75,
        }
    )


def test_summary_metrics_reports_undefined_metrics_as_none():
    summary = summary_metrics(R2)
    assert summary["bwt"] is None
    assert summary["fwt"] is None
    assert summary["forgetting"] is None
    assert summary["acc"] == pytest.approx(0.70)


# ---------------------------------------------------------------------------- Missing entries


def test_metric_needing_a_missing_entry_is_none_and_others_are_unaffected():
    R = [row[:] for row in R4]
    R[0][3] = None  # b_3 not measured: FWT needs it, nothing else does
    assert fwt(R) is None
    assert bwt(R) == pytest.approx(-0.225)
    assert acc(R) == pytest.approx(0.65)


# ---------------------------------------------------------------------------- Validation


@pytest.mark.parametrize(
    "R, message",
    [
        ([[0.5]], "at least 2 rows"),
        ([], "at least 2 rows"),
        ([[0.5, 0.1], [0.4]], r"2 x 2"),
        ([[0.5, 0.1, 0.2], [0.4, 0.6, 0.3]], "row 0 has 3 entries"),
        ([[0.5, 0.1], [0.4, 1.2]], r"R\[1\]\[1\]"),
        ([[0.5, -0.1], [0.4, 0.7]], r"R\[0\]\[1\]"),
        ([[0.5, float("nan")], [0.4, 0.7]], r"R\[0\]\[1\]"),
        ([[0.5, "0.1"], [0.4, 0.7]], r"R\[0\]\[1\]"),
        ("ab", "sequence of rows"),
    ],
)
def test_invalid_matrix_raises_value_error(R, message):
    with pytest.raises(ValueError, match=message):
        acc(R)
    with pytest.raises(ValueError, match=message):
        summary_metrics(R)


# ---------------------------------------------------------------------------- FUAR


def test_fuar_is_forgotten_over_gained():
    # max(0, 0.80 - 0.70) / (max(0, 0.50 - 0.10) + max(0, 0.45 - 0.05)) = 0.10 / 0.80
    assert fuar(0.80, 0.70, 0.10, 0.50, 0.05, 0.45) == pytest.approx(0.125)


def test_fuar_is_zero_when_invariant_knowledge_improves():
    # max(0, 0.80 - 0.85) / (0.40 + 0.40) = 0 / 0.80
    assert fuar(0.80, 0.85, 0.10, 0.50, 0.05, 0.45) == 0.0


def test_fuar_ignores_negative_gains_in_the_denominator():
    # UL drops (clipped to 0), NL gains 0.20: max(0, 0.80 - 0.70) / (0 + 0.20) = 0.10 / 0.20
    assert fuar(0.80, 0.70, 0.50, 0.30, 0.10, 0.30) == pytest.approx(0.5)


def test_fuar_is_no_gain_when_nothing_is_gained():
    assert fuar(0.80, 0.70, 0.30, 0.30, 0.10, 0.10) is None  # 0.10 / (0 + 0)


def test_fuar_is_no_gain_when_all_gains_are_negative():
    assert fuar(0.80, 0.70, 0.50, 0.30, 0.40, 0.20) is None  # 0.10 / (max(0,-0.2) + max(0,-0.2))


def test_fuar_treats_a_missing_pair_as_zero_gain():
    # No updated facts: max(0, 0.80 - 0.70) / (0 + max(0, 0.30 - 0.10)) = 0.10 / 0.20
    assert fuar(0.80, 0.70, None, None, 0.10, 0.30) == pytest.approx(0.5)
    # No new facts: 0.10 / (max(0, 0.50 - 0.10) + 0) = 0.10 / 0.40
    assert fuar(0.80, 0.70, 0.10, 0.50, None, None) == pytest.approx(0.25)
    assert fuar(0.80, 0.70, None, None, None, None) is None


def test_fuar_stages_sums_numerators_and_denominators_not_ratios():
    stages = [
        # forgotten 0.05; gained 0.20 (UL) + 0.20 (NL); alone: 0.05 / 0.40 = 0.125
        StageGain(0.80, 0.75, 0.10, 0.30, 0.00, 0.20),
        # IL rises: forgotten max(0, -0.03) = 0; gained 0 (no UL) + 0.30 (NL)
        StageGain(0.75, 0.78, None, None, 0.10, 0.40),
        # forgotten 0.08; UL and NL fall: gained 0; alone: no gain
        StageGain(0.78, 0.70, 0.20, 0.10, 0.30, 0.20),
    ]
    # (0.05 + 0 + 0.08) / (0.40 + 0.30 + 0) = 0.13 / 0.70
    assert fuar_stages(stages) == pytest.approx(0.13 / 0.70)


def test_fuar_stages_with_one_stage_equals_fuar():
    stage = StageGain(0.80, 0.70, 0.10, 0.50, 0.05, 0.45)
    assert fuar_stages([stage]) == pytest.approx(fuar(0.80, 0.70, 0.10, 0.50, 0.05, 0.45))


def test_fuar_stages_is_no_gain_when_summed_gain_is_zero():
    assert fuar_stages([]) is None
    stages = [
        StageGain(0.8, 0.7, 0.5, 0.4, None, None),
        StageGain(0.7, 0.6, None, None, 0.3, 0.3),
    ]
    assert fuar_stages(stages) is None  # (0.1 + 0.1) / (0 + 0)


def test_stage_gain_rejects_half_missing_pairs_and_out_of_range_values():
    with pytest.raises(ValueError, match="ul_before and ul_after"):
        StageGain(0.8, 0.7, 0.1, None, 0.1, 0.2)
    with pytest.raises(ValueError, match="nl_before and nl_after"):
        StageGain(0.8, 0.7, 0.1, 0.2, None, 0.2)
    with pytest.raises(ValueError, match="il_after"):
        StageGain(0.8, 1.5)
    with pytest.raises(ValueError, match="il_before"):
        StageGain(None, 0.7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ul_before and ul_after"):
        fuar(0.8, 0.7, None, 0.4, 0.1, 0.2)


def test_format_fuar_prints_no_gain_for_undefined():
    assert format_fuar(None) == "no gain"
    assert format_fuar(0.125) == "0.125"
    assert format_fuar(0.0) == "0.000"
    assert format_fuar(0.13 / 0.70) == "0.186"


# ---------------------------------------------------------------------------- Perplexity


def test_perplexity_change_reports_delta_and_ratio():
    change = perplexity_change(20.0, 25.0)
    assert change == pytest.approx({"delta": 5.0, "ratio": 1.25})  # 25 - 20; 25 / 20


@pytest.mark.parametrize(
    "before, after", [(0.0, 10.0), (10.0, -1.0), (math.inf, 10.0), (10.0, math.nan)]
)
def test_perplexity_change_rejects_non_positive_or_non_finite_values(before, after):
    with pytest.raises(ValueError, match="perplexity"):
        perplexity_change(before, after)


# ---------------------------------------------------------------------------- Helpers


def test_mean_is_none_for_an_empty_cohort():
    assert mean([]) is None
    assert mean([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.75)  # 3 / 4


def test_cohort_matrix_places_invariant_in_column_zero_and_stage_j_in_column_j():
    by_row = {
        0: {"invariant": 0.50, "stage1": 0.10, "stage2": 0.20},
        1: {"invariant": 0.45, "stage1": 0.80, "stage2": 0.30},
        2: {"invariant": 0.40, "stage1": 0.60, "stage2": 0.90},
    }
    assert cohort_matrix(by_row, T=2) == R3


def test_cohort_matrix_leaves_missing_cohorts_and_rows_as_none():
    by_row = {
        0: {"invariant": 0.50, "stage2": 0.20},
        2: {"invariant": 0.40, "stage1": 0.60, "stage2": 0.90, "stale": 0.30},
    }
    assert cohort_matrix(by_row, T=2) == [
        [0.50, None, 0.20],
        [None, None, None],
        [0.40, 0.60, 0.90],
    ]


def test_cohort_matrix_output_feeds_the_metrics():
    R = cohort_matrix({0: {"invariant": 0.5}, 1: {"invariant": 0.4, "stage1": 0.7}}, T=1)
    assert summary_metrics(R) == {
        "acc": pytest.approx(0.7),
        "bwt": None,
        "fwt": None,
        "forgetting": None,
        "plasticity": pytest.approx(0.7),
        "retention": pytest.approx(0.8),  # 0.4 / 0.5
    }


@pytest.mark.parametrize(
    "by_row, T, message",
    [
        ({0: {"invariant": 0.5}}, 0, "T"),
        ({3: {"invariant": 0.5}}, 2, "row index"),
        ({-1: {"invariant": 0.5}}, 2, "row index"),
        ({1: {"stage3": 0.5}}, 2, "stage3"),
        ({1: {"stage0": 0.5}}, 2, "stage0"),
        ({1: {"stage1": 1.5}}, 2, "stage1"),
    ],
)
def test_cohort_matrix_rejects_rows_and_cohorts_outside_the_stream(by_row, T, message):
    with pytest.raises(ValueError, match=message):
        cohort_matrix(by_row, T)


def test_domain_metrics_read_learning_on_the_diagonal_and_forgetting_below_it():
    # rows 0..2 (before, after stage 1, after stage 2) x domains 1, 2: nats per token
    L = [{"1": 5.0, "2": 6.0}, {"1": 3.0, "2": 5.5}, {"1": 3.5, "2": 2.0}]
    assert domain_gain(L) == pytest.approx(((5.0 - 3.0) + (5.5 - 2.0)) / 2)
    assert domain_forgetting(L) == pytest.approx(3.5 - 3.0)  # domain 1, from just after stage 1 to the end
    assert domain_perplexity(L) == pytest.approx(math.exp((3.5 + 2.0) / 2))
    assert domain_forgetting(L[:2]) is None  # one stage: nothing earlier to forget
    assert domain_gain([{}, {}]) is None and domain_perplexity([{}, {}]) is None  # no domain text
