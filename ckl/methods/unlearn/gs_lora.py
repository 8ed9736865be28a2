"""GS-LoRA: continual forgetting with group-sparse LoRA (Zhao et al. 2024, "Continual
Forgetting for Pre-trained Vision Models", CVPR).

Composed with LoRA, which it needs: `lora+gs_lora`. Each stage's deletion requests train
a fresh LoRA adapter (the `lora` part merges it after the stage, so every stage's
requests get their own group set, as the paper adds one per forgetting task) with

    loss = weight * relu(bound - NLL(forget batch))        bounded forgetting
         + retain_weight * NLL(retain batch)                 keep the rest
         + alpha * sum over blocks b of ||LoRA parameters of block b||_2   group sparsity

The group lasso (an L2 norm per group, summed: Yuan & Lin 2006) drives whole blocks'
adapters to zero, so the forgetting is done by the few blocks that must change and the
others are left as they were; the bounded term stops pushing once the forgotten text's
loss passes `bound` (plain gradient ascent runs away). tests/methods/unlearn/test_gs_lora.py
shows both: with the penalty the update concentrates in fewer blocks than without it.
The stopping rule, modes and retain set are the shared unlearning machinery's
(`ckl.methods.unlearn.part`).

Deviations: the paper's groups are the LoRA modules of each Transformer block's FFN
(`lora.target_modules` selects which linear layers carry adapters; the groups are always
per block); its data are image classes, here the forget facts' text; the loss is summed
per step, not averaged over a dataset; its prototype regularisation (GS-LoRA++) is not
included. The penalty acts while the forgetting objective does (not in the steps a
stage spends only teaching).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import check_number
from ckl.methods.base import register_part
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning
from ckl.model.layers import parameter_depths


@dataclass
class GsLoraConfig(UnlearnConfig):
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the next-token loss on the retain set"})
    bound: float = field(default=3.0, metadata={"help": "BND: the forgetting term relu(bound - NLL) stops pushing once the forget text's next-token loss passes it"})
    alpha: float = field(default=0.1, metadata={"help": "weight of the group-sparse penalty (sum over blocks of the L2 norm of their LoRA parameters)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.bound, "bound", low=0, low_open=True)
        check_number(self.alpha, "alpha", low=0)


class GsLora(Unlearning):
    name = "gs_lora"
    requires = frozenset({"lora"})

    def objective(self, model, batch: dict) -> torch.Tensor:
        return F.relu(self.config.bound - model(**batch).loss)

    def lora_groups(self, model) -> dict[int, list[torch.nn.Parameter]]:
        """The trainable LoRA parameters of each block, by block index."""
        depths, _ = parameter_depths(model)
        out: dict[int, list[torch.nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_" in name and 0 <= depths[name]:
                out.setdefault(depths[name], []).append(p)
        return out

    def penalty(self, model) -> torch.Tensor:
        """sum over blocks of sqrt(sum of the squares of the block's LoRA parameters)."""
        norms = [torch.sqrt(sum(p.float().pow(2).sum() for p in ps)) for ps in self.lora_groups(model).values()]
        return torch.stack(norms).sum()

    def loss(self, model, batch, outputs, step: int) -> torch.Tensor | None:
        total = super().loss(model, batch, outputs, step)
        if total is None or self.config.alpha == 0:
            return total
        return total + self.config.alpha * self.penalty(model)


register_part("gs_lora", GsLoraConfig, GsLora, "GS-LoRA: bounded forgetting + retain loss through LoRA, with a group-sparse penalty per block (compose as lora+gs_lora; Zhao et al. 2024)", kinds=("forget",))
