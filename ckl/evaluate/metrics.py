"""Continual-learning and continual-knowledge-learning metrics, as pure functions.

Everything here takes plain numbers and returns plain numbers: no I/O, no tensors. The
definitions are those of METRICS.md (the project's metric definitions); each function
names its source.

The results matrix ``R`` has rows ``0..T`` and columns ``0..T``: ``R[i][j]`` is the
accuracy on cohort ``j`` after stage ``i``. Row 0 is the model before any stage; column 0
is the invariant base knowledge, column ``j >= 1`` is what stage ``j`` taught. ``T`` is the
number of stages and ``b_j = R[0][j]``.

Conventions:

* A metric that is undefined for the given input (e.g. BWT with a single stage) returns
  ``None``; it never raises and never substitutes a number.
* An entry of ``R`` may be ``None`` ("not measured", e.g. a stage that taught nothing that
  can be probed). A metric that needs a missing entry returns ``None``; entries it does
  not need may be missing.
* A malformed matrix (wrong shape, value outside [0, 1]) raises ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from ckl.data import cohorts

Matrix = Sequence[Sequence[float | None]]
"""Results matrix R, (T+1) x (T+1); ``None`` marks an entry that was not measured."""



# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_accuracy(x: object, what: str) -> None:
    """Raise ValueError unless ``x`` is a real number in [0, 1] (NaN fails too)."""
    if not _is_number(x):
        raise ValueError(f"{what} must be a number in [0, 1], got {x!r}")
    if not 0.0 <= float(x) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"{what} must be an accuracy in [0, 1], got {x!r}")


def _validate(R: Matrix) -> int:
    """Check that R is a (T+1) x (T+1) matrix of accuracies with T >= 1; return T.

    Raises:
        ValueError: if R is not square, has fewer than 2 rows, or holds an entry that is
            neither None nor a number in [0, 1].
    """
    if isinstance(R, (str, bytes)) or not isinstance(R, Sequence):
        raise ValueError(f"results matrix must be a sequence of rows, got {type(R).__name__}")
    n = len(R)
    if n < 2:
        raise ValueError(
            f"results matrix needs at least 2 rows (row 0 = before any stage, then one row "
            f"per stage), got {n}"
        )
    for i, row in enumerate(R):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"row {i} of the results matrix must be a sequence, got {row!r}")
        if len(row) != n:
            raise ValueError(
                f"results matrix must be (T+1) x (T+1) = {n} x {n} (one column per cohort: "
                f"invariant, stage1..stage{n - 1}); row {i} has {len(row)} entries"
            )
        for j, x in enumerate(row):
            if x is not None:
                _check_accuracy(x, f"R[{i}][{j}]")
    return n - 1


def _entries(R: Matrix, cells: Sequence[tuple[int, int]]) -> list[float] | None:
    """The entries at ``cells`` as floats, or None if any of them was not measured."""
    values = [R[i][j] for i, j in cells]
    if any(v is None for v in values):
        return None
    return [float(v) for v in values]  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Continual-learning metrics on the results matrix
# --------------------------------------------------------------------------------------


def acc(R: Matrix) -> float | None:
    """Average accuracy on all taught cohorts after the last stage.

    ``ACC = (1/T) * sum_{j=1..T} R[T][j]``

    Source: Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning"
    (GEM), 2017. Column 0 (invariant knowledge) is not part of ACC; see `retention`.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        ACC in [0, 1], or None if an entry it needs was not measured.

    Raises:
        ValueError: if R is malformed.
    """
    T = _validate(R)
    values = _entries(R, [(T, j) for j in range(1, T + 1)])
    if values is None:
        return None
    return math.fsum(values) / T


def bwt(R: Matrix) -> float | None:
    """Backward transfer: how accuracy on earlier cohorts changed by the end.

    ``BWT = 1/(T-1) * sum_{j=1..T-1} (R[T][j] - R[j][j])``

    Negative BWT means earlier stages were forgotten. Source: Lopez-Paz & Ranzato, GEM,
    2017.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        BWT in [-1, 1]; None when T < 2 (no earlier cohort) or an entry it needs was not
        measured.

    Raises:
        ValueError: if R is malformed.
    """
    T = _validate(R)
    if T < 2:
        return None
    final = _entries(R, [(T, j) for j in range(1, T)])
    just_learned = _entries(R, [(j, j) for j in range(1, T)])
    if final is None or just_learned is None:
        return None
    return math.fsum(a - b for a, b in zip(final, just_learned)) / (T - 1)


def fwt(R: Matrix) -> float | None:
    """Forward transfer: accuracy on a cohort just before its stage, relative to row 0.

    ``FWT = 1/(T-1) * sum_{j=2..T} (R[j-1][j] - b_j)``, with ``b_j = R[0][j]``.

    Source: Lopez-Paz & Ranzato, GEM, 2017. GEM's ``b_j`` is a randomly initialised
    model; here it is the base model before any stage (row 0), as METRICS.md defines.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        FWT in [-1, 1]; None when T < 2 or an entry it needs was not measured.

    Raises:
        ValueError: if R is malformed.
    """
    T = _validate(R)
    if T < 2:
        return None
    before_stage = _entries(R, [(j - 1, j) for j in range(2, T + 1)])
    base = _entries(R, [(0, j) for j in range(2, T + 1)])
    if before_stage is None or base is None:
        return None
    return math.fsum(a - b for a, b in zip(before_stage, base)) / (T - 1)


def forgetting_per_cohort(R: Matrix) -> list[float | None]:
    """Forgetting of each cohort taught before the last stage.

    ``f_j = max_{l in 1..T-1} R[l][j] - R[T][j]`` for ``j = 1..T-1``.

    Source: Chaudhry et al., "Riemannian Walk for Incremental Learning: Understanding
    Forgetting and Intransigence" (RWalk), 2018. As in the paper and METRICS.md, the max
    runs over all intermediate rows ``1..T-1`` (row 0 is excluded); ``f_j`` is not clipped
    at 0, so it is negative when the cohort ends above its best intermediate accuracy.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        ``[f_1, ..., f_{T-1}]``; empty when T < 2. An ``f_j`` is None when an entry it
        needs was not measured.

    Raises:
        ValueError: if R is malformed.
    """
    T = _validate(R)
    result: list[float | None] = []
    for j in range(1, T):
        history = _entries(R, [(l, j) for l in range(1, T)])
        final = R[T][j]
        if history is None or final is None:
            result.append(None)
        else:
            result.append(max(history) - float(final))
    return result


def forgetting(R: Matrix) -> float | None:
    """Average forgetting over the cohorts taught before the last stage.

    ``F = 1/(T-1) * sum_{j=1..T-1} f_j`` with ``f_j`` from `forgetting_per_cohort`.

    Source: Chaudhry et al., RWalk, 2018.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        F in [-1, 1]; None when T < 2 or any ``f_j`` is undefined.

    Raises:
        ValueError: if R is malformed.
    """
    per_cohort = forgetting_per_cohort(R)
    if not per_cohort or any(f is None for f in per_cohort):
        return None
    return math.fsum(per_cohort) / len(per_cohort)  # type: ignore[arg-type]


def plasticity(R: Matrix) -> float | None:
    """Average accuracy on each cohort right after the stage that taught it.

    ``plasticity = (1/T) * sum_{j=1..T} R[j][j]`` (the diagonal, without ``R[0][0]``).

    Source: METRICS.md; the "just learned" accuracy ``a_{j,j}`` that GEM's BWT
    (Lopez-Paz & Ranzato, 2017) and RWalk's intransigence (Chaudhry et al., 2018) are
    measured against.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        Plasticity in [0, 1], or None if an entry it needs was not measured.

    Raises:
        ValueError: if R is malformed.
    """
    T = _validate(R)
    values = _entries(R, [(j, j) for j in range(1, T + 1)])
    if values is None:
        return None
    return math.fsum(values) / T


def kept_ratio(before: float | None, after: float | None) -> float | None:
    """after / before: the share of an accuracy still there (every retention ckl reports:
    of the matrix, of an editing run's untouched facts, of an unlearning run's kept and
    boundary facts, of `ckl update`'s keep-set). None when either is unmeasured or
    `before` is 0 (nothing to retain); above 1 when accuracy rose."""
    if before is None or after is None or before == 0:
        return None
    return after / before


def retention(R: Matrix) -> float | None:
    """Share of the invariant base knowledge still known after the last stage.

    ``retention = R[T][0] / R[0][0]``

    Source: METRICS.md ("retention of base knowledge"); the ratio form of the invariant
    knowledge loss of Jang et al., "Towards Continual Knowledge Learning of Language
    Models", 2022. It can exceed 1 if base accuracy rose.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        The ratio; None when ``R[0][0] == 0`` (nothing to retain) or either entry was not
        measured.

    Raises:
        ValueError: if R is malformed.
    """
    T = _validate(R)
    values = _entries(R, [(T, 0), (0, 0)])
    if values is None:
        return None
    after, before = values
    return kept_ratio(before, after)


def summary_metrics(R: Matrix) -> dict[str, float | None]:
    """All matrix metrics in one dict.

    Args:
        R: results matrix, (T+1) x (T+1), T >= 1.

    Returns:
        ``{"acc", "bwt", "fwt", "forgetting", "plasticity", "retention"}`` mapped to the
        value of the function of the same name (None where undefined).

    Raises:
        ValueError: if R is malformed.
    """
    _validate(R)
    return {
        "acc": acc(R),
        "bwt": bwt(R),
        "fwt": fwt(R),
        "forgetting": forgetting(R),
        "plasticity": plasticity(R),
        "retention": retention(R),
    }


# --------------------------------------------------------------------------------------
# Building the matrix
# --------------------------------------------------------------------------------------


def mean(xs) -> float | None:
    """Arithmetic mean of the measured values (None and NaN left out), e.g. of per-fact
    correctness in a cohort or of a number over seeds: ckl's one mean.

    Args:
        xs: values to average (any iterable).

    Returns:
        The mean, or None when nothing was measured (an empty cohort has no accuracy).
    """
    kept = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not kept:
        return None
    return math.fsum(kept) / len(kept)


def cohort_matrix(
    acc_by_row_and_cohort: Mapping[int, Mapping[str, float | None]], T: int
) -> list[list[float | None]]:
    """Build the results matrix R from per-row, per-cohort accuracies.

    Column 0 is cohort ``"invariant"``, column ``j`` is cohort ``f"stage{j}"``. Rows or
    cohorts absent from the mapping become None ("not measured"). Other cohort names (for
    example a stale-object cohort) are not part of R and are ignored.

    Args:
        acc_by_row_and_cohort: row index (0 = before any stage, i = after stage i) ->
            cohort name -> accuracy in [0, 1].
        T: number of stages; R is (T+1) x (T+1).

    Returns:
        R as a list of T+1 rows of T+1 entries, None where a cohort is missing.

    Raises:
        ValueError: if T < 1, a row index is outside 0..T, a ``stage{j}`` cohort has j
            outside 1..T, or an accuracy is outside [0, 1].
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (number of stages) must be an integer >= 1, got {T!r}")
    R: list[list[float | None]] = [[None] * (T + 1) for _ in range(T + 1)]
    for row, by_cohort in acc_by_row_and_cohort.items():
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= T:
            raise ValueError(f"row index must be an integer in 0..{T} (T={T}), got {row!r}")
        for cohort, value in by_cohort.items():
            if cohort == cohorts.INVARIANT:
                col = 0
            elif (stage := cohorts.stage_of(cohort, cohorts.STAGE)) is not None:
                col = stage
                if not 1 <= col <= T:
                    raise ValueError(
                        f"cohort {cohort!r} in row {row} does not exist with T={T} stages "
                        f"(expected stage1..stage{T})"
                    )
            else:
                continue
            if value is not None:
                _check_accuracy(value, f"accuracy of cohort {cohort!r} in row {row}")
                value = float(value)
            R[row][col] = value
    return R


# --------------------------------------------------------------------------------------
# Continual knowledge learning: FUAR
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageGain:
    """Accuracies before and after one stage, as FUAR needs them.

    IL = invariant-knowledge accuracy, UL = updated-fact accuracy (against the new
    object), NL = new-fact accuracy. A stage with no updated facts (or no new facts)
    leaves that pair as None; it then counts as zero gain.

    Raises:
        ValueError: if only one value of a UL/NL pair is None, or any value is outside
            [0, 1].
    """

    il_before: float
    il_after: float
    ul_before: float | None = None
    ul_after: float | None = None
    nl_before: float | None = None
    nl_after: float | None = None

    def __post_init__(self) -> None:
        for pair in (("ul_before", "ul_after"), ("nl_before", "nl_after")):
            missing = [getattr(self, name) is None for name in pair]
            if any(missing) and not all(missing):
                raise ValueError(
                    f"{pair[0]} and {pair[1]} must both be None (no such facts in this "
                    f"stage) or both be accuracies, got {getattr(self, pair[0])!r} and "
                    f"{getattr(self, pair[1])!r}"
                )
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name.startswith("il_"):
                raise ValueError(f"{f.name} is required, got None")
            if value is not None:
                _check_accuracy(value, f.name)


def _gain(before: float | None, after: float | None) -> float:
    """Clipped gain ``max(0, after - before)``; 0 for an absent pair."""
    if before is None or after is None:
        return 0.0
    return max(0.0, after - before)


def fuar_stages(stages: Sequence[StageGain]) -> float | None:
    """FUAR over several stages: summed forgetting over summed gain.

    ``FUAR = sum_k max(0, IL_before_k - IL_after_k)
             / sum_k (max(0, UL_after_k - UL_before_k) + max(0, NL_after_k - NL_before_k))``

    Each stage's terms are clipped at 0 before summing, so a stage where invariant
    accuracy rose does not cancel forgetting in another. This is a ratio of sums, not a
    mean of per-stage FUARs. Source: Jang et al., "Towards Continual Knowledge Learning of
    Language Models", 2022 (FUAR, Forgotten / (Updated + Acquired) Ratio). Lower is
    better; 1 means one fact forgotten per fact gained.

    Args:
        stages: one `StageGain` per stage. A stage without updated (or new) facts passes
            None for that pair, which counts as zero gain.

    Returns:
        FUAR >= 0, or None ("no gain") when the summed gain is 0, including when there
        are no stages.
    """
    forgotten = math.fsum(max(0.0, s.il_before - s.il_after) for s in stages)
    gained = math.fsum(
        _gain(s.ul_before, s.ul_after) + _gain(s.nl_before, s.nl_after) for s in stages
    )
    if gained == 0.0:
        return None
    return forgotten / gained


def fuar(
    il_0: float,
    il_n: float,
    ul_0: float | None,
    ul_n: float | None,
    nl_0: float | None,
    nl_n: float | None,
) -> float | None:
    """FUAR for one stage (or for the whole stream measured at its two ends).

    ``FUAR = max(0, IL_0 - IL_n) / (max(0, UL_n - UL_0) + max(0, NL_n - NL_0))``

    Source: Jang et al., "Towards Continual Knowledge Learning of Language Models", 2022.

    Args:
        il_0: invariant-knowledge accuracy before.
        il_n: invariant-knowledge accuracy after.
        ul_0: updated-fact accuracy (new object) before; None with ``ul_n`` when there
            are no updated facts (zero gain).
        ul_n: updated-fact accuracy after.
        nl_0: new-fact accuracy before; None with ``nl_n`` when there are no new facts
            (zero gain).
        nl_n: new-fact accuracy after.

    Returns:
        FUAR >= 0, or None ("no gain") when the denominator is 0, which includes gains
        that are all negative.

    Raises:
        ValueError: if only one value of a UL/NL pair is None, or a value is outside
            [0, 1].
    """
    return fuar_stages([StageGain(il_0, il_n, ul_0, ul_n, nl_0, nl_n)])


def format_fuar(x: float | None) -> str:
    """Render a FUAR value for reports: ``"no gain"`` for None, else 3 decimals.

    Args:
        x: a value from `fuar` or `fuar_stages`.

    Returns:
        e.g. ``"0.125"``, or ``"no gain"``.
    """
    if x is None:
        return "no gain"
    return f"{x:.3f}"


# --------------------------------------------------------------------------------------
# General ability
# --------------------------------------------------------------------------------------


def _domain_cells(L: Sequence[dict[str, float]], pairs) -> list[float]:
    return [L[a][str(j)] - L[b][str(j)] for a, b, j in pairs if str(j) in L[a] and str(j) in L[b]]


def domain_gain(L: Sequence[dict[str, float]]) -> float | None:
    """Continual pre-training: how much each stage's own domain was learned, the mean over
    stages j of L[j-1][j] - L[j][j], where L[i][j] is the mean per-token negative
    log-likelihood (nats) of domain j's held-out text after row i (row 0: before any
    stage). Positive: the stage lowered its domain's loss. None without domain text."""
    T = len(L) - 1
    gains = _domain_cells(L, [(j - 1, j, j) for j in range(1, T + 1)])
    return mean(gains)


def domain_forgetting(L: Sequence[dict[str, float]]) -> float | None:
    """Continual pre-training: the loss regained on earlier domains by the end, the mean
    over j < T of L[T][j] - L[j][j] (nats per token; the loss form of Chaudhry et al.
    2018's forgetting, measured from just after the domain's own stage). Positive: earlier
    domains were partly forgotten. None with fewer than two stages or without domain text."""
    T = len(L) - 1
    return mean(_domain_cells(L, [(T, j, j) for j in range(1, T)]))


def domain_perplexity(L: Sequence[dict[str, float]]) -> float | None:
    """Continual pre-training: exp of the mean over domains of L[T][j], the geometric mean
    of the domains' held-out perplexities after the last stage. None without domain text."""
    last = [v for v in L[-1].values()] if L else []
    m = mean(last)
    return None if m is None else math.exp(m)


def perplexity_change(ppl_before: float, ppl_after: float) -> dict[str, float]:
    """Change in perplexity on held-out general text.

    ``delta = ppl_after - ppl_before``; ``ratio = ppl_after / ppl_before``.

    Source: METRICS.md, "General ability and cost". Higher after means general language
    ability was damaged.

    Args:
        ppl_before: perplexity before (finite, > 0).
        ppl_after: perplexity after (finite, > 0).

    Returns:
        ``{"delta": ..., "ratio": ...}``.

    Raises:
        ValueError: if a perplexity is not a finite positive number.
    """
    for name, value in (("ppl_before", ppl_before), ("ppl_after", ppl_after)):
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite perplexity > 0, got {value!r}")
    return {
        "delta": float(ppl_after) - float(ppl_before),
        "ratio": float(ppl_after) / float(ppl_before),
    }
