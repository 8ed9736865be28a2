"""The relearning attack: does "unlearned" knowledge come back after brief fine-tuning?

RESTOR (Rezaei et al. 2024) and "Memory Self-Regeneration" show that knowledge removed
by unlearning often returns when the model is fine-tuned a little, on unrelated data or
on a part of what was forgotten. A method that only hides knowledge (suppresses the
surface answer) recovers; one that removed it does not recover more than a model that
never knew the facts would learn from the same data.

The attack fine-tunes a deep copy of the unlearned model (the run's checkpoint is never
touched) through the normal training loop (`ckl.train.loop.train`) on either

- `partial`: a `fraction` of the forgotten facts (a seeded choice), then re-probes the
  OTHER forgotten facts, which the attack never showed: any accuracy they regain was
  still in the weights; or
- `unrelated`: `facts` known facts that no stage touched (a seeded sample), then
  re-probes every forgotten fact.

It returns the accuracy of the re-probed forgotten facts before and after the attack,
per probe, so a summary can set it against the accuracy they had before unlearning, and
the same numbers for the never-seen facts (`unseen` cohort) when the stream has them: a
control for what the attack data alone teaches.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ckl.model.scoring import ProbeScorer, score_probes
from ckl.data.facts import Fact, Probe
from ckl.data.stream import Stream, render_documents
from ckl.run.config import AttackConfig  # noqa: F401  (its home is the experiment config, torch-free)
from ckl.train.loop import TrainConfig, rng_for, train



@dataclass
class AttackResult:
    """Outcome of one attack: re-probed statement probes of the forgotten facts."""

    config: dict
    trained_on: list[str]  # fact ids shown to the attack
    probe_ids: list[str]  # forgotten-fact probes re-probed (never shown to the attack)
    before: list[bool]  # exact match per probe, unlearned model
    after: list[bool]  # exact match per probe, after the attack
    unseen_before: float | None = None  # never-seen facts' accuracy: the control
    unseen_after: float | None = None
    steps: int = 0
    seconds: float = 0.0
    # with `curve`: after each scored step, {"step", "accuracy" (re-probed forgotten facts),
    # "unseen" (the control, None without never-seen facts)}; step 0 is the unlearned model
    curve: list[dict] = field(default_factory=list)

    @property
    def accuracy_before(self) -> float | None:
        return sum(self.before) / len(self.before) if self.before else None

    @property
    def accuracy_after(self) -> float | None:
        return sum(self.after) / len(self.after) if self.after else None

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after}


def attack_split(forgotten: Sequence[Fact], kept: Sequence[Fact], config: AttackConfig) -> tuple[list[Fact], list[Fact]]:
    """(facts the attack trains on, forgotten facts it re-probes), seeded."""
    rng = rng_for(config.seed, "attack", config.data)
    if config.data == "unrelated":
        pool = list(kept)
        rng.shuffle(pool)
        return pool[: config.facts], list(forgotten)
    order = list(forgotten)
    rng.shuffle(order)
    k = min(len(order) - 1, max(1, round(config.fraction * len(order))))
    shown = {f.id for f in order[:k]}
    return order[:k], [f for f in forgotten if f.id not in shown]


def relearning_attack(model, tokenizer, stream: Stream, probes: Sequence[Probe], config: AttackConfig, accelerator, stage: int | None = None) -> AttackResult:
    """Fine-tune a copy of `model` as configured and re-probe the forgotten facts.

    Args:
        model: the unlearned model; it is not modified.
        stream: gives the forgotten facts (stages 1..`stage`, default all) and the kept ones.
        probes: the run's probes; statement probes of the forget and unseen cohorts are used.

    Raises:
        ValueError: the stream has too few forgotten (partial: 2) or kept facts.
    """
    start = time.perf_counter()
    stage = stream.T if stage is None else stage
    forgotten = [f for ch in stream.stages[:stage] for f in ch.forget]
    kept = stream.invariant()
    if config.data == "partial" and len(forgotten) < 2:
        raise ValueError(f"a partial relearning attack needs at least 2 forgotten facts, the stream has {len(forgotten)}")
    if config.data == "unrelated" and not kept:
        raise ValueError("an unrelated-data attack needs known facts that no stage touches; the stream has none")
    shown, probed = attack_split(forgotten, kept, config)
    probed_ids = {f.id for f in probed}
    targets = [p for p in probes if p.kind == "statement" and p.change == "forget" and p.fact_id in probed_ids]
    unseen = [p for p in probes if p.kind == "statement" and p.cohort == "unseen"]
    before = score_probes(model, tokenizer, targets + unseen)
    attacked = copy.deepcopy(model)
    train_config = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                               eval_every=config.curve, eval_spacing="log")
    n = len(targets)
    curve: list[dict] = []
    scorer = ProbeScorer(tokenizer, targets + unseen) if config.curve else None

    def point(step: int, epoch: int, loss: float) -> None:
        em = scorer(attacked).em
        curve.append({"step": step, "accuracy": float(em[:n].mean()) if n else None,
                      "unseen": float(em[n:].mean()) if unseen else None})

    def documents(epoch: int) -> list[str]:
        return render_documents(shown, stream.relations, rng_for(config.seed, "attack-docs", epoch), qa_subjects=stream.qa_subjects)

    result = train(attacked, tokenizer, documents, train_config, accelerator, seed=rng_for(config.seed, "attack-batches").randrange(2**31),
                   on_eval=point if scorer is not None else None)
    after = score_probes(attacked, tokenizer, targets + unseen)
    return AttackResult(
        config=asdict(config),
        trained_on=[f.id for f in shown],
        probe_ids=[p.id for p in targets],
        before=[bool(x) for x in before.em[:n]],
        after=[bool(x) for x in after.em[:n]],
        unseen_before=float(before.em[n:].mean()) if unseen else None,
        unseen_after=float(after.em[n:].mean()) if unseen else None,
        steps=result.steps,
        seconds=time.perf_counter() - start,
        curve=curve,
    )
