"""Replay: mix earlier knowledge into each stage's training (experience replay).

The buffer holds facts, not text: training text for replayed facts is rendered afresh
each epoch like the stage's own facts. Holding facts lets the buffer keep the truth: when
a stage updates a fact, the buffer's copy is replaced by the new version, and a forgotten
fact is dropped, so replay never re-teaches a stale object or a deleted fact (replaying
stored text would). Capacity is bounded; new facts enter by reservoir sampling (Vitter
1985, Algorithm R), which keeps every fact seen so far equally likely to be held.

Reference: Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning";
in knowledge learning, the "mix-review" baseline of Jang et al. 2022.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ckl.facts import Fact, fact_row
from ckl.methods.base import Part, StageContext, register_part
from ckl.stream import Change
from ckl.train.loop import rng_for


@dataclass
class ReplayConfig:
    fraction: float = field(default=0.5, metadata={"help": "share of replayed facts in each epoch's training facts, in [0, 1)"})
    buffer_size: int = field(default=1000, metadata={"help": "most facts the buffer holds"})

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 <= self.fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {self.fraction!r}")
        if isinstance(self.buffer_size, bool) or not isinstance(self.buffer_size, int) or self.buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive integer, got {self.buffer_size!r}")


class ReservoirBuffer:
    """A bounded set of facts filled by reservoir sampling, kept true under updates."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.facts: list[Fact] = []
        self.seen = 0

    def add(self, fact: Fact, rng: random.Random) -> None:
        self.seen += 1
        if len(self.facts) < self.capacity:
            self.facts.append(fact)
            return
        slot = rng.randrange(self.seen)
        if slot < self.capacity:
            self.facts[slot] = fact

    def replace(self, fact: Fact) -> None:
        self.facts = [fact if f.id == fact.id else f for f in self.facts]

    def remove(self, fact_id: str) -> None:
        self.facts = [f for f in self.facts if f.id != fact_id]


class Replay(Part):
    name = "replay"

    def __init__(self, config: ReplayConfig):
        self.config = config
        self.buffer: ReservoirBuffer | None = None

    def _ensure(self, ctx: StageContext) -> ReservoirBuffer:
        if self.buffer is None:
            self.buffer = ReservoirBuffer(self.config.buffer_size)
            rng = rng_for(ctx.seed, "reservoir", 0)
            for fact in ctx.base:
                self.buffer.add(fact, rng)
        return self.buffer

    def extra_facts(self, facts: list[Fact], ctx: StageContext, rng: random.Random) -> list[Fact]:
        buffer = self._ensure(ctx)
        busy = {f.id for f in facts} | (ctx.change.touched() if ctx.change else set())
        pool = [f for f in buffer.facts if f.id not in busy]  # never replay what this stage changes
        wanted = round(self.config.fraction / (1 - self.config.fraction) * len(facts))
        return rng.sample(pool, min(wanted, len(pool)))

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        buffer = self._ensure(ctx)
        rng = rng_for(ctx.seed, "reservoir", change.stage)
        for record in list(change.update) + list(change.edit):
            buffer.replace(record.fact)
        for fact in change.forget:
            buffer.remove(fact.id)
        for fact in change.learn:
            buffer.add(fact, rng)

    def state_dict(self) -> dict:
        if self.buffer is None:
            return {}
        return {"facts": [fact_row(f) for f in self.buffer.facts], "seen": self.buffer.seen}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.buffer = None
            return
        self.buffer = ReservoirBuffer(self.config.buffer_size)
        self.buffer.facts = [Fact(**row) for row in state["facts"]]
        self.buffer.seen = state["seen"]


register_part("replay", ReplayConfig, Replay, "mix earlier facts into training from a bounded reservoir buffer kept true under updates")
