"""Replay: mix earlier knowledge into each stage's training (experience replay).

The buffer holds facts, not text: training text for replayed facts is rendered afresh
each epoch like the stage's own facts. Holding facts lets the buffer keep the truth: when
a stage updates a fact, the buffer's copy is replaced by the new version, and a forgotten
fact is dropped, so replay never re-teaches a stale object or a deleted fact (replaying
stored text would). Capacity is bounded; new facts enter by reservoir sampling (Vitter
1985, Algorithm R), which keeps every fact seen so far equally likely to be held.

Reference: Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning";
in knowledge learning, the "mix-review" baseline of Jang et al. 2022. `text_fraction` also
mixes in general pretraining sentences, as mix-review does (He et al. 2021, "Analyzing the
Forgetting Problem in Pretrain-Finetuning of Open-domain Dialogue Response Models").

On a continual pre-training stream (a domain corpus per stage) replay also keeps a
reservoir of the earlier stages' corpus documents (`corpus_buffer`) and replays them as
they are: an epoch's replayed share is drawn from the held facts and documents together,
in proportion to how many of each it holds, and sized against the stage's facts plus
its corpus documents (Gururangan et al. 2020 and Ke et al. 2023 replay earlier domains'
text the same way).

Which held facts an epoch replays is the `policy` option: a uniform sample (`reservoir`,
the default), spread evenly over relations or cohorts (`balanced`), spaced repetition
(`spaced`) or a fixed budget of the least confident facts (`budget`); see
`ckl.methods.data._policies`.

`history` (dated worlds): an update makes the old version false now but not false then;
"In 2020, X works for A." stays true after stage 1 teaches "In 2021, X works for B.". With
`history`, every superseded version of a dated fact is replayed each epoch as its dated
sentence only (never the plain one, which the update made stale), from the stage of the
update on: the rehearsal that lets a model answer "As of 2020, X works for" after the
update (docs/methods.md, prompted knowledge cutoffs). Off, replay never re-teaches an old
object in any form, as before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ckl.core.checks import ConfigError
from ckl.data.facts import Fact, fact_row
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.data._policies import POLICIES, LeitnerSchedule, balanced_sample, group_key, influence_scores, least_confident, most_influential, recall
from ckl.data.stream import Change, dated_text, superseded
from ckl.train.loop import rng_for


@dataclass
class ReplayConfig:
    fraction: float = field(default=0.5, metadata={"help": "share of replayed facts in each epoch's training facts, in [0, 1)"})
    buffer_size: int = field(default=1000, metadata={"help": "most facts the buffer holds"})
    policy: str = field(default="reservoir", metadata={"help": "which held facts an epoch replays: reservoir (uniform) | balanced | spaced | budget | influence"})
    balance_by: str = field(default="relation", metadata={"help": "balanced: spread evenly over 'relation' or 'cohort' (the stage that made the fact true)"})
    max_box: int = field(default=4, metadata={"help": "spaced: highest Leitner box (a recalled fact rests up to 2^max_box epochs)"})
    budget: int = field(default=64, metadata={"help": "budget: facts replayed per epoch (the least confident ones), whatever the stage's size; influence: reference facts the influence is measured on"})
    rescore_every: int = field(default=1, metadata={"help": "budget, influence: epochs between two scorings of the buffer"})
    text_fraction: float = field(default=0.0, metadata={"help": "share of general pretraining sentences among each epoch's fact statements plus those sentences, in [0, 1) (mix-review)"})
    corpus_buffer: int = field(default=500, metadata={"help": "most earlier corpus documents held (continual pre-training streams; reservoir sampling)"})
    history: bool = field(default=False, metadata={"help": "dated relations (a dated world): an updated fact's superseded version stays true as history and is replayed every epoch as its dated sentence only ('In 2020, X works for A.'), from the stage that updates it on"})

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 <= self.fraction < 1:
            raise ConfigError("fraction", f"fraction must be in [0, 1), got {self.fraction!r}")
        if isinstance(self.text_fraction, bool) or not isinstance(self.text_fraction, (int, float)) or not 0 <= self.text_fraction < 1:
            raise ConfigError("text_fraction", f"text_fraction must be in [0, 1), got {self.text_fraction!r}")
        if isinstance(self.buffer_size, bool) or not isinstance(self.buffer_size, int) or self.buffer_size < 1:
            raise ConfigError("buffer_size", f"buffer_size must be a positive integer, got {self.buffer_size!r}")
        if type(self.history) is not bool:
            raise ConfigError("history", f"history must be true or false, got {self.history!r}")
        if self.policy not in POLICIES:
            raise ConfigError("policy", f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.balance_by not in ("relation", "cohort"):
            raise ConfigError("balance_by", f"balance_by must be 'relation' or 'cohort', got {self.balance_by!r}")
        for name in ("max_box", "budget", "rescore_every", "corpus_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "max_box" else 1):
                raise ConfigError(name, f"{name} must be an integer >= {0 if name == 'max_box' else 1}, got {value!r}")


class ReservoirBuffer:
    """A bounded set of facts (or corpus documents) filled by reservoir sampling, kept true
    under updates."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.facts: list = []
        self.seen = 0

    def add(self, fact, rng: random.Random) -> None:
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
        self.schedule = LeitnerSchedule(config.max_box)  # spaced
        self.clock = 0  # spaced: epochs of earlier stages
        self.model = None  # spaced / budget / influence: the model being trained, during a stage
        self.chosen: list[Fact] = []  # budget: the facts of the latest scoring
        self.epoch_facts = 0  # facts trained this epoch (the stage's and the replayed), for text_fraction
        self.documents = ReservoirBuffer(config.corpus_buffer)  # earlier stages' corpus documents
        self.epoch_documents: list[str] = []  # the held documents this epoch replays
        self.history: list[Fact] = []  # history: superseded versions of dated facts (valid_until set)

    def _ensure(self, ctx: StageContext) -> ReservoirBuffer:
        if self.buffer is None:
            self.buffer = ReservoirBuffer(self.config.buffer_size)
            rng = rng_for(ctx.seed, "reservoir", 0)
            for fact in ctx.base:
                self.buffer.add(fact, rng)
        return self.buffer

    def prepare(self, model, ctx: StageContext):
        self.model = model if self.config.policy in ("spaced", "budget", "influence") else None
        self.chosen = []
        return model

    def extra_facts(self, facts: list[Fact], ctx: StageContext, rng: random.Random) -> list[Fact]:
        replayed = self._replayed(facts, ctx, rng)
        self.epoch_facts = len(facts) + len(replayed)
        return replayed

    def extra_documents(self, ctx: StageContext, rng: random.Random) -> list[str]:
        """General pretraining sentences (mix-review, He et al. 2021): facts alone keep the
        facts but let the model's general language drift (held-out perplexity)."""
        replayed, self.epoch_documents = self.epoch_documents, []
        if self.config.history:
            replayed += [dated_text(f, rng.choice(ctx.relations[f.relation].templates)) for f in self._history(ctx)]
        share = self.config.text_fraction
        if not share or not ctx.general_text:
            return replayed
        wanted = round(share / (1 - share) * self.epoch_facts)
        pool = list(ctx.general_text)
        return replayed + ([pool[i] for i in rng.choices(range(len(pool)), k=wanted)] if wanted > len(pool) else rng.sample(pool, wanted))

    def _history(self, ctx: StageContext) -> list[Fact]:
        """Earlier stages' superseded dated facts and those this stage's updates supersede."""
        return self.history + self._superseded(ctx.change, ctx) if ctx.change else list(self.history)

    def _superseded(self, change: Change, ctx: StageContext) -> list[Fact]:
        """The versions `change`'s updates of dated facts replace (ckl.data.stream.superseded),
        dated from the buffer's version, or K0's for a fact the buffer dropped."""
        before = {f.id: f for f in ctx.base} | {f.id: f for f in self._ensure(ctx).facts}
        return superseded(change.update, ctx.relations, before)

    def _replayed(self, facts: list[Fact], ctx: StageContext, rng: random.Random) -> list[Fact]:
        buffer = self._ensure(ctx)
        busy = {f.id for f in facts} | (ctx.change.touched() if ctx.change else set())
        pool = [f for f in buffer.facts if f.id not in busy]  # never replay what this stage changes
        corpus = ctx.change.corpus if ctx.change else ()
        wanted = round(self.config.fraction / (1 - self.config.fraction) * (len(facts) + len(corpus)))
        held = self.documents.facts
        if held:  # earlier domains' documents take their share of the replayed items
            n_docs = min(len(held), round(wanted * len(held) / (len(held) + len(pool))))
            self.epoch_documents = rng.sample(held, n_docs)
            wanted -= n_docs
        policy = self.config.policy
        if policy == "reservoir":
            return rng.sample(pool, min(wanted, len(pool)))
        if policy == "balanced":
            return balanced_sample(pool, wanted, rng, group_key(self.config.balance_by))
        if self.model is None:
            raise RuntimeError(f"replay policy {policy!r} scores facts with the model: call prepare first")
        if policy == "spaced":
            clock = self.clock + ctx.epoch
            due = self.schedule.due(pool, clock)
            recalled, _ = recall(self.model, ctx.tokenizer, due, ctx.relations)
            failed = self.schedule.review(due, recalled, clock)
            return rng.sample(failed, min(wanted, len(failed)))
        if policy == "influence":
            if ctx.epoch % self.config.rescore_every == 0 or not self.chosen:
                reference = rng_for(ctx.seed, "influence", ctx.stage, ctx.epoch).sample(pool, min(len(pool), self.config.budget))
                scores = influence_scores(self.model, ctx.tokenizer, pool, ctx.relations, reference)
                self.chosen = most_influential(pool, scores, len(pool))
            return self.chosen[:wanted]
        if ctx.epoch % self.config.rescore_every == 0 or not self.chosen:  # budget
            correct, logprob = recall(self.model, ctx.tokenizer, pool, ctx.relations)
            self.chosen = least_confident(pool, correct, logprob, self.config.budget)
        return list(self.chosen)

    def finish(self, model, ctx: StageContext):
        if self.model is not None:
            self.clock += ctx.epoch + 1
        self.model, self.chosen = None, []
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        buffer = self._ensure(ctx)
        rng = rng_for(ctx.seed, "reservoir", change.stage)
        if self.config.history:
            self.history += self._superseded(change, ctx)
        for record in list(change.update) + list(change.edit):
            buffer.replace(record.fact)
        for fact in change.forget:
            buffer.remove(fact.id)
        for fact in change.learn:
            buffer.add(fact, rng)
        doc_rng = rng_for(ctx.seed, "corpus-reservoir", change.stage)
        for doc in change.corpus:
            self.documents.add(doc, doc_rng)
        held = {f.id for f in buffer.facts}
        for fact_id in [i for i in self.schedule.box if i not in held]:
            self.schedule.forget(fact_id)  # dropped from the buffer
        for record in list(change.update) + list(change.edit):
            self.schedule.forget(record.fact.id)  # a new object: recall starts over

    def state_dict(self) -> dict:
        if self.buffer is None:
            return {}
        state = {"facts": [fact_row(f) for f in self.buffer.facts], "seen": self.buffer.seen}
        if self.history:
            state["history"] = [fact_row(f) for f in self.history]
        if self.documents.seen:
            state.update(corpus=list(self.documents.facts), corpus_seen=self.documents.seen)
        if self.config.policy == "spaced":
            state.update(schedule=self.schedule.state(), clock=self.clock)
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.buffer = None
            self.documents = ReservoirBuffer(self.config.corpus_buffer)
            self.history = []
            return
        self.buffer = ReservoirBuffer(self.config.buffer_size)
        self.buffer.facts = [Fact(**row) for row in state["facts"]]
        self.buffer.seen = state["seen"]
        self.history = [Fact(**row) for row in state.get("history", [])]
        self.documents = ReservoirBuffer(self.config.corpus_buffer)
        self.documents.facts, self.documents.seen = list(state.get("corpus", [])), int(state.get("corpus_seen", 0))
        self.schedule.load(state.get("schedule", {}))
        self.clock = int(state.get("clock", 0))


register_part("replay", ReplayConfig, Replay, "mix earlier facts into training from a bounded reservoir buffer kept true under updates; policy: reservoir | balanced | spaced | budget")
