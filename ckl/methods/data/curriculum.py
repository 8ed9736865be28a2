"""Curriculum: pace a stage's new facts in from easy to hard (LeanAgent, Kumarappan et
al. 2025, "LeanAgent: Lifelong Learning for Formal Theorem Proving", orders what it
learns by difficulty and learns progressively; the pacing is the "baby steps" curriculum
of Bengio et al. 2009, "Curriculum Learning", and Spitkovsky et al. 2010).

At `prepare` the stage-start model scores every fact the stage teaches (its statement
probe, one batched pass: greedy exact match, then the answer's log-probability); facts it
already states are easiest, then the more likely the answer the easier. Epoch e of E
trains the easiest share

    pace(e) = start + (1 - start) * e / (ramp * E)      (1 from epoch ramp * E on)

of them, so the first epochs see the easy facts only and every fact is in from `ramp` of
the budget on. `order: hard_first` reverses the ranking (an anti-curriculum, for
comparison). Stability and plasticity are the run's own retention and acquisition
columns.

Deviations: LeanAgent ranks whole repositories by the complexity of their theorems
(e^steps of their proofs) and then trains on each in turn; here the difficulty is the
model's own confidence on each fact, and the pacing happens inside a stage. The loop's
cosine schedule estimates its length from the first epoch, which pacing makes the
smallest, so the curriculum refuses `schedule: cosine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ckl.core.checks import ConfigError, check_number
from ckl.data.facts import Fact
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.data._policies import recall
from ckl.train.loop import TrainConfig

ORDERS = ("easy_first", "hard_first")


@dataclass
class CurriculumConfig:
    start: float = field(default=0.3, metadata={"help": "share of the stage's facts (the easiest) in the first epoch, in (0, 1]"})
    ramp: float = field(default=0.5, metadata={"help": "share of the epochs after which every fact is in, in (0, 1]"})
    order: str = field(default="easy_first", metadata={"help": "easy_first (curriculum) or hard_first (anti-curriculum)"})

    def __post_init__(self) -> None:
        check_number(self.start, "start", low=0, low_open=True, high=1)
        check_number(self.ramp, "ramp", low=0, low_open=True, high=1)
        if self.order not in ORDERS:
            raise ConfigError("order", f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")


def pace(epoch: int, epochs: int, start: float, ramp: float) -> float:
    """The share of the facts trained in `epoch` (0-based) of `epochs`."""
    full = max(1, math.ceil(ramp * epochs))
    return 1.0 if epoch >= full else start + (1 - start) * epoch / full


class Curriculum(Part):
    name = "curriculum"

    def __init__(self, config: CurriculumConfig):
        self.config = config
        self.rank: dict[str, int] = {}  # fact id -> position, easiest first (this stage)

    def check(self, train: TrainConfig) -> str | None:
        if train.schedule == "cosine":
            return "the loop sizes a cosine schedule from the first epoch, which a curriculum makes the smallest; use schedule: constant"
        return None

    def prepare(self, model, ctx: StageContext):
        change = ctx.change
        facts = [] if change is None else [*change.learn, *(r.fact for r in (*change.update, *change.edit))]
        em, logprob = recall(model, ctx.tokenizer, facts, ctx.relations)
        order = sorted(range(len(facts)), key=lambda i: (not em[i], -float(logprob[i]), facts[i].id))  # easiest first
        if self.config.order == "hard_first":
            order.reverse()
        self.rank = {facts[i].id: k for k, i in enumerate(order)}
        return model

    def select_facts(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        ranked = sorted(facts, key=lambda f: self.rank.get(f.id, len(self.rank)))
        share = pace(ctx.epoch, max(1, ctx.epochs), self.config.start, self.config.ramp)
        return ranked[: max(1, math.ceil(share * len(ranked)))] if ranked else ranked

    def finish(self, model, ctx: StageContext):
        self.rank = {}
        return model


register_part("curriculum", CurriculumConfig, Curriculum, "curriculum: pace the stage's facts in from easy to hard, ranked by the stage-start model's confidence (LeanAgent-style)")
