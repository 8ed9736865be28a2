"""Knowledge-editing metrics (../shared/METRICS.md, "Knowledge editing"), as pure
functions of per-probe outcomes.

An outcome is a dict with at least: probe_id, cohort, kind, em (greedy exact match),
rank_ok (the gold answer ranks first among the candidates) and predicted (the top-ranked
candidate), as `Store.outcomes` returns them. Editing streams (ckl.data.formats.edits) give
every probe exactly two candidates, so rank_ok is CounterFact's pairwise comparison.

Cohorts: `stageJ` holds the facts edited in stage J with their new objects (statement =
the edit prompt, paraphrase = the held-out rephrasing); `localJ` the neighbourhood facts
of those edits (true objects, candidates [true, new target of the edit]); `invariant`
everything no stage touches.

Definitions
    efficacy        mean em on the edit prompts (EasyEdit's "reliability")
    generalization  mean em on the paraphrase prompts of the edited facts
    locality        fraction of neighbourhood probes whose prediction equals the pre-edit
                    model's (row 0) prediction (EasyEdit's definition); `locality_acc` is
                    the mean em against the true answer
    ES, PS, NS      Meng et al. 2022 (ROME) / 2023 (MEMIT): ES = mean[P(new) > P(true)] on
                    edit prompts, PS the same on paraphrases, NS = mean[P(true) > P(new)] on
                    neighbourhood prompts, all from the stored candidate ranking
    score           harmonic mean of ES, PS and NS (0 if any is 0)
    retention       em on untouched (invariant) knowledge after / before
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ckl.data import cohorts
from ckl.evaluate.metrics import kept_ratio, mean

Outcome = Mapping[str, Any]


def mean_of(outcomes: Iterable[Outcome], key: str) -> float | None:
    """Mean of a boolean field over the outcomes; None when there are none."""
    values = [float(o[key]) for o in outcomes]
    return mean(values)


def harmonic_mean(values: Sequence[float | None]) -> float | None:
    """Harmonic mean (CounterFact's Score); None if a value is missing, 0 if one is 0."""
    if not values or any(v is None for v in values):
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def agreement(after: Iterable[Outcome], before: Mapping[str, Outcome]) -> float | None:
    """Fraction of outcomes whose prediction equals the pre-edit prediction of the same
    probe (`before`: probe id -> outcome at row 0)."""
    same = [o["predicted"] == before[o["probe_id"]]["predicted"] for o in after if o["probe_id"] in before]
    return mean(same)


def select(outcomes: Iterable[Outcome], cohorts: Callable[[str], bool], kind: str) -> list[Outcome]:
    return [o for o in outcomes if o["kind"] == kind and cohorts(o["cohort"])]


def edit_metrics(after: Sequence[Outcome], before: Sequence[Outcome], first: int, last: int) -> dict[str, float | None]:
    """Every editing metric for the edits of stages first..last, from the outcomes of one
    row (`after`) and of row 0 (`before`)."""
    edited, local = cohorts.in_stages(cohorts.STAGE, first, last), cohorts.in_stages(cohorts.LOCAL, first, last)
    prompts, paraphrases = select(after, edited, "statement"), select(after, edited, "paraphrase")
    neighbours = select(after, local, "statement")
    out = {
        "efficacy": mean_of(prompts, "em"),
        "generalization": mean_of(paraphrases, "em"),
        "locality": agreement(neighbours, {o["probe_id"]: o for o in before}),
        "locality_acc": mean_of(neighbours, "em"),
        "es": mean_of(prompts, "rank_ok"),
        "ps": mean_of(paraphrases, "rank_ok"),
        "ns": mean_of(neighbours, "rank_ok"),
        "edits": len(prompts),
    }
    out["score"] = harmonic_mean([out["es"], out["ps"], out["ns"]])
    return out


def retention(after: Sequence[Outcome], before: Sequence[Outcome], key: str = "em") -> float | None:
    """Accuracy on untouched (invariant) statement probes after / before; None if the
    base accuracy is 0 or there are no such probes."""
    a = mean_of(select(after, lambda c: c == cohorts.INVARIANT, "statement"), key)
    b = mean_of(select(before, lambda c: c == cohorts.INVARIANT, "statement"), key)
    return kept_ratio(b, a)


def sequential_curve(outcomes_at: Callable[[int], Sequence[Outcome]], T: int) -> list[dict[str, Any]]:
    """Metrics after each batch i = 1..T of sequential edits: the current batch (stage i),
    the earlier batches (stages 1..i-1: are earlier edits kept?), all edits so far, and
    untouched knowledge (retention and its accuracy)."""
    before = list(outcomes_at(0))
    curve = []
    for i in range(1, T + 1):
        after = list(outcomes_at(i))
        now, so_far = edit_metrics(after, before, i, i), edit_metrics(after, before, 1, i)
        earlier = edit_metrics(after, before, 1, i - 1) if i > 1 else None
        curve.append({
            "batch": i,
            "edits": so_far["edits"],
            "current": now,
            "earlier": earlier,
            "all": so_far,
            "retention": retention(after, before),
            "untouched_acc": mean_of(select(after, lambda c: c == cohorts.INVARIANT, "statement"), "em"),
        })
    return curve


def has_edits(names: Iterable[str]) -> bool:
    """Whether a run's probes include neighbourhood cohorts (an editing stream)."""
    return any(cohorts.stage_of(c, cohorts.LOCAL) is not None for c in names)
