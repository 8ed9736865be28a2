"""SER: strong experience replay, the consistency half (Zhuo et al. 2023, "Continual
Learning with Strong Experience Replay"); compose with replay: `replay+ser`.

SER adds to experience replay two consistency terms on the logits, both a mean squared
error as in DER (Buzzega et al. 2020, "Dark Experience for General Continual Learning"):
backward consistency (the model's logits on buffer samples against the logits stored when
they were seen) and forward consistency (its logits on the current data against the old
model's). At `prepare` the part keeps a frozen copy of the stage-start model, and each step
adds

    weight * mean over non-padding positions of ||logits - old model's logits||^2 / V

on the training batch, which holds both the stage's text and, with `replay`, the replayed
facts' text: on the current text this is SER's forward consistency, on the replayed text
it stands in for the backward one. `lwf` distils the same model through temperature-
softened probabilities (a KL); this matches the raw logits, which DER and SER argue keeps
more of the old function.

Deviations: the buffer holds facts, not their logits at the time they were seen (ckl's
replay renders them afresh), so the backward term's targets are the stage-start model's
logits, the model as it was after the stage before, not as it was when each fact was
first learned; one weight serves both terms (the batch does not say which text was
replayed); the squared error is divided by the vocabulary size (a per-logit mean) so that
`weight` does not scale with V.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.distill._frozen import FrozenCopy


@dataclass
class SerConfig:
    weight: float = field(default=0.1, metadata={"help": "weight of the logit-consistency term (mean squared error per logit) added to the next-token loss"})

    def __post_init__(self) -> None:
        check_number(self.weight, "weight", low=0)


def logit_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions with mask == 1 of the mean squared logit difference.
    student, teacher: (B, L, V); mask: (B, L)."""
    per_position = (student.float() - teacher.float()).pow(2).mean(-1)  # (B, L)
    w = mask.to(per_position.dtype)
    return (per_position * w).sum() / w.sum().clamp_min(1.0)


class Ser(Part):
    name = "ser"
    reads_batch = True  # consistency on the teaching batch

    def __init__(self, config: SerConfig):
        self.config = config
        self.old = None  # the frozen stage-start model, during a stage only

    def prepare(self, model, ctx: StageContext):
        self.old = FrozenCopy(model)
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.old is None or self.config.weight == 0 or batch is None:
            return None
        return self.config.weight * logit_mse(outputs.logits, self.old.logits(batch), batch["attention_mask"])

    def finish(self, model, ctx: StageContext):
        self.old = None
        return model


register_part("ser", SerConfig, Ser, "SER: mean-squared logit consistency with the stage-start model on current and replayed text (compose with replay; Zhuo et al. 2023)")
