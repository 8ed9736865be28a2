"""Cohort names: which group of facts a probe belongs to. Built here and parsed here only.

    invariant   base knowledge (K0) that no stage changes
    unseen      facts never taught (an imported unlearning stream's floor)
    stageJ      what stage J taught: new facts (learn), and the new objects of the facts it
                updated or edited
    staleJ      the old objects of the facts stage J updated or edited (should be lost)
    forgetJ     the facts stage J asked to forget (should be lost)
    localJ      neighbourhood facts of stage J's edits (should stay; editing streams)
"""

from __future__ import annotations

import re

INVARIANT = "invariant"
UNSEEN = "unseen"
STAGE, STALE, FORGET, LOCAL = "stage", "stale", "forget", "local"
PREFIXES = (STAGE, STALE, FORGET, LOCAL)

_NAME = re.compile(r"(stage|stale|forget|local)(\d+)")


def name(prefix: str, stage: int) -> str:
    """`name("stage", 2)` -> "stage2"."""
    if prefix not in PREFIXES:
        raise ValueError(f"cohort prefix must be one of {', '.join(PREFIXES)}, got {prefix!r}")
    return f"{prefix}{stage}"


def names(prefix: str, T: int, first: int = 1) -> list[str]:
    """The cohorts of `prefix` for stages first..T, in order."""
    return [name(prefix, j) for j in range(first, T + 1)]


def parse(cohort: str) -> tuple[str, int | None]:
    """("stage", 2) for "stage2"; (cohort, None) for "invariant", "unseen" or any other name."""
    m = _NAME.fullmatch(cohort)
    return (m.group(1), int(m.group(2))) if m else (cohort, None)


def stage_of(cohort: str, prefix: str) -> int | None:
    """The stage number if `cohort` is `prefix` + digits, else None."""
    kind, stage = parse(cohort)
    return stage if kind == prefix else None


def in_stages(prefix: str, first: int, last: int):
    """A filter: the cohort is `prefix`J with first <= J <= last."""

    def test(cohort: str) -> bool:
        stage = stage_of(cohort, prefix)
        return stage is not None and first <= stage <= last

    return test


def is_selector(selector: str) -> bool:
    """Whether `selector` names a cohort ("invariant", "stage2") or a prefix ("stage":
    every stage's cohort of that kind), as `selects` reads it."""
    return selector in (INVARIANT, UNSEEN) or selector in PREFIXES or _NAME.fullmatch(selector) is not None


def selects(selector: str, cohort: str) -> bool:
    """Whether `selector` (a cohort name or a prefix, see `is_selector`) takes `cohort`."""
    return cohort == selector or (selector in PREFIXES and parse(cohort)[0] == selector)
