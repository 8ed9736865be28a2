"""KL minimisation: gradient ascent on the forget set while keeping the model's
next-token distributions on retained facts close to the stage-start model's (the "KL
Minimization" baseline of Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for
LLMs").

loss = weight * (-NLL(forget batch)) + retain_weight * KL(p_ref || p_model) on a retain
batch, averaged over its token positions (`ckl.methods.distill.lwf.distillation_kl`, T = 1).
The reference is a frozen copy of the model as the stage starts.

Retain set, stopping rule and modes as for `graddiff` and `ga`. Cost: a second model in
memory and a reference forward per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.methods.base import register_part
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning


@dataclass
class KlConfig(UnlearnConfig):
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the KL term on the retain set"})
    retain_loss: str = field(default="kl", metadata={"help": "retain term: kl (KL to the stage-start model) or nll (next-token loss)"})


class KlMinimisation(Unlearning):
    name = "kl"

    def objective(self, model, batch: dict) -> torch.Tensor:
        return -model(**batch).loss


register_part("kl", KlConfig, KlMinimisation, "gradient ascent on the forget facts + KL to the stage-start model on retained facts (TOFU)", kinds=("forget",))
