"""Mix-CPT: learn the knowledge first, then align the format on a few things the model
already knows (Jiang et al. 2024, "Mix-CPT: A Domain Adaptation Framework via Decoupling
Knowledge Learning and Format Alignment").

A stage's epochs are split in two. The first `epochs - align_epochs` train the stage's
facts as text, as plain fine-tuning does (knowledge learning). The last `align_epochs`
train no new text at all: only question-answer lines of up to `align_facts` facts the
model already knows, of people whose questions are trained (the world's QA half), so
the model is reminded of the question-answer format without being shown a single
question about the stage's facts. Whether it can then answer questions about what it only
read is the run's extraction-acquisition column (the stage's facts' questions stay held
out, as ckl's extraction protocol needs; tests/methods/data/test_mix_cpt.py checks that no
epoch trains one).

The alignment set is a reservoir of the known facts kept true across stages (the
unlearning parts' retain pool: updated facts carry their new object, forgotten ones
leave), so alignment never re-teaches a stale or deleted answer.

Deviations: the paper's knowledge stage mixes domain text with general text under a
logit-swap self-distillation loss (compose with `replay` (`text_fraction`) or `lwf` for
those roles), and its alignment set is general instructions the model answers well; here
it is question-answer lines of known facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ckl.core.checks import check_count
from ckl.data.facts import Fact
from ckl.data.stream import Change, asks, qa_line
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.unlearn.data import RetainPool
from ckl.train.loop import TrainConfig


@dataclass
class MixCptConfig:
    align_epochs: int = field(default=1, metadata={"help": "last epochs of each stage that train only the format alignment (question-answer lines of known facts)"})
    align_facts: int = field(default=64, metadata={"help": "most known facts whose question-answer lines form the alignment set"})

    def __post_init__(self) -> None:
        check_count(self.align_epochs, "align_epochs")
        check_count(self.align_facts, "align_facts")


class MixCpt(Part):
    name = "mix_cpt"

    def __init__(self, config: MixCptConfig):
        self.config = config
        self.pool = RetainPool(config.align_facts * 4)  # known facts, kept true; the QA half is drawn from it

    def check(self, train: TrainConfig) -> str | None:
        if train.epochs <= self.config.align_epochs:
            return f"train.epochs ({train.epochs}) must exceed {self.name}.align_epochs ({self.config.align_epochs}): the knowledge stage needs at least one epoch"
        return None

    def aligning(self, ctx: StageContext) -> bool:
        return ctx.epoch >= ctx.epochs - self.config.align_epochs

    def prepare(self, model, ctx: StageContext):
        self.pool.start(ctx.base, ctx.seed)
        return model

    def select_facts(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        return [] if self.aligning(ctx) else facts

    def alignment_set(self, ctx: StageContext) -> list[Fact]:
        known = [f for f in self.pool.sample(ctx.change) if asks(f.subject, ctx.qa_subjects) and ctx.relations[f.relation].questions]
        return sorted(known, key=lambda f: f.id)[: self.config.align_facts]

    def extra_documents(self, ctx: StageContext, rng: random.Random) -> list[str]:
        if not self.aligning(ctx):
            return []
        return [qa_line(f, ctx.relations[f.relation], rng) for f in self.alignment_set(ctx)]

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        self.pool.observe(change, ctx.seed)

    def state_dict(self) -> dict:
        return self.pool.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pool = RetainPool(self.config.align_facts * 4)
        self.pool.load_state_dict(state)


register_part("mix_cpt", MixCptConfig, MixCpt, "Mix-CPT: learn the stage's facts as text, then align the question-answer format on known facts only (Jiang et al. 2024)")
