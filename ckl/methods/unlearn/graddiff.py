"""GradDiff: gradient ascent on the forget set plus gradient descent on a retain set
(the "Gradient Difference" baseline of Maini et al. 2024, "TOFU: A Task of Fictitious
Unlearning for LLMs"; Liu et al. 2022, "Continual Learning and Private Unlearning").

loss = weight * (-NLL(forget batch)) + retain_weight * NLL(retain batch).

The retain set is a bounded reservoir of the facts the model should still know (the base
knowledge, kept true as stages update, teach and delete facts; the facts the stage
touches left out), rendered with the training templates like the forget set. Stopping
rule and modes as for `ga`.

Deviation: TOFU's retain set is a fixed split of the benchmark; here it is sampled from
the stream's known facts (`retain_facts` of them), the same for every stage until the
stream changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.methods.base import register_part
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning


@dataclass
class GradDiffConfig(UnlearnConfig):
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the next-token loss on the retain set"})


class GradDiff(Unlearning):
    name = "graddiff"

    def objective(self, model, batch: dict) -> torch.Tensor:
        return -model(**batch).loss


register_part("graddiff", GradDiffConfig, GradDiff, "GradDiff: gradient ascent on the forget facts + next-token loss on retained facts", kinds=("forget",))
