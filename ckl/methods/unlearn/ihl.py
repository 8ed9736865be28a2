"""Inverted hinge loss (IHL) on the forget set (Cha et al. 2024, "Towards Robust and
Parameter-Efficient Knowledge Unlearning for LLMs").

loss = mean over the forget documents' tokens of 1 + p(y_t) - max_{v != y_t} p(v)
(`ckl.methods.unlearn.objectives.inverted_hinge_loss`): it lowers the true token only
until another token is more likely, by raising the best alternative, so it is bounded in
[0, 2] where gradient ascent is not, and the model keeps producing likely (fluent) text.
The paper pairs it with LoRA: compose `ihl+lora`.

Deviation: the paper also initialises the LoRA adapters from a Fisher-weighted low-rank
approximation (FILA); `lora` here uses PEFT's standard initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ckl.methods.base import register_part
from ckl.methods.unlearn.objectives import inverted_hinge_loss
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning


@dataclass
class IhlConfig(UnlearnConfig):
    """The inverted hinge loss has only the shared unlearning options."""


class InvertedHinge(Unlearning):
    name = "ihl"

    def objective(self, model, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
        return inverted_hinge_loss(logits, batch["labels"])


register_part("ihl", IhlConfig, InvertedHinge, "inverted hinge loss on the forget facts, bounded; compose with lora (Cha et al. 2024)", kinds=("forget",))
