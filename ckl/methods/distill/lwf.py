"""LwF: learning without forgetting, by distillation to the stage-start model on the current
data (Li & Hoiem 2017, "Learning without Forgetting"; in its language-model form, a
token-level KL to the previous model's next-token distributions).

At `prepare` the part keeps a frozen copy of the model as it starts the stage (the
teacher). Each step it adds

    weight * T^2 * mean over non-padding positions of KL(softmax(teacher / T) || softmax(student / T))

on the training batch itself (the T^2 keeps the gradient's size independent of the
temperature, Hinton et al. 2015). The teacher is dropped in `finish`.

Deviations: the paper distils the old *task heads'* outputs while a new head learns the
new task; an LM has one head, so the distillation and the new facts' next-token loss act
on the same distributions, and on the positions that state a changed fact they pull in
opposite directions (`weight` sets the balance). Positions are the non-padding positions
(`attention_mask`), each weighing the same. Cost: a second model in memory and a teacher
forward per step; under data parallelism each process keeps its own teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.distill._frozen import FrozenCopy


@dataclass
class LwfConfig:
    weight: float = field(default=1.0, metadata={"help": "weight of the distillation term added to the next-token loss"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature T of teacher and student (the term is scaled by T^2)"})

    def __post_init__(self) -> None:
        check_number(self.weight, "weight", low=0)
        check_number(self.temperature, "temperature", low=0, low_open=True)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over positions with mask == 1 of KL(softmax(teacher / T) || softmax(student / T)).

    Args:
        student_logits, teacher_logits: (B, L, V).
        mask: (B, L), 1 where the position counts.
    """
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, L, V)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (B, L)
    weights = mask.to(kl.dtype)
    return (kl * weights).sum() / weights.sum().clamp_min(1.0)


class Lwf(Part):
    name = "lwf"

    def __init__(self, config: LwfConfig):
        self.config = config
        self.teacher = None  # the frozen stage-start model, during a stage only

    def prepare(self, model, ctx: StageContext):
        self.teacher = FrozenCopy(model)
        return model

    reads_batch = True  # distillation on the teaching batch (ckl.train.loop.LossTerm)

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.teacher is None or self.config.weight == 0 or batch is None:  # None: a step without teaching text
            return None
        teacher_logits = self.teacher.logits(batch)  # (B, L, V)
        T = float(self.config.temperature)
        kl = distillation_kl(outputs.logits, teacher_logits, batch["attention_mask"], T)
        return self.config.weight * T * T * kl

    def finish(self, model, ctx: StageContext):
        self.teacher = None
        return model


register_part("lwf", LwfConfig, Lwf, "LwF: distil the stage-start model's next-token distributions on the current data")
