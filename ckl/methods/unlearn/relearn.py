"""Relearning-style unlearning: teach the forget facts' prompts an alternative,
non-sensitive answer instead of pushing the true one down (ReLearn: Xu et al. 2025,
"ReLearn: Unlearning via Learning for Large Language Models").

Each forget fact is rendered with the training templates with its object replaced by an
alternative: a candidate object of the same relation other than the true one, chosen per
fact deterministically. The part minimises the next-token loss of that text (positive
training, no ascent) and, with retain_weight (default 1, as ReLearn trains on its retain
set too), the next-token loss on retained facts; `retain_loss: kl` keeps the retain set
close to the stage-start model instead. The model keeps answering fluently, with an
answer that is not the deleted one: like IDK, this hides rather than erases, and the
relearning attack measures what comes back.

Deviations: ReLearn writes the alternatives and question variants with an LLM (vague,
non-sensitive answers and paraphrased questions); here the alternative is a candidate
object of the relation (a plausible wrong answer: a false statement about the subject,
which a deployment may not want) and the variants are the relation's training templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.errors import InputError
from ckl.data.facts import Fact, Relation
from ckl.methods.base import StageContext, register_part
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning, substitute
from ckl.data.stream import stable_hash


@dataclass
class RelearnConfig(UnlearnConfig):
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the retain term"})


def alternative(fact: Fact, relation: Relation) -> str:
    """A candidate object of the relation other than the fact's, the same on every call.

    Raises:
        InputError: the relation has no other candidate.
    """
    others = sorted(c for c in set(relation.candidates) if c != fact.object)
    if not others:
        raise InputError("<stream>", None, f"relations.{relation.name}.candidates",
                         f"relearn needs another candidate object than {fact.object!r} to answer instead for fact {fact.id!r}")
    return others[stable_hash("relearn", fact.id) % len(others)]


class Relearn(Unlearning):
    name = "relearn"

    def targets(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        return substitute(facts, [alternative(f, ctx.relations[f.relation]) for f in facts])

    def objective(self, model, batch: dict) -> torch.Tensor:
        return model(**batch).loss


register_part("relearn", RelearnConfig, Relearn, "relearn forgotten facts with an alternative answer, positive training only (ReLearn, Xu et al. 2025)", kinds=("forget",))
