"""PromptSRC-style self-regulation: keep agreeing with the frozen model while learning, and
end the stage at a Gaussian-weighted average of the weights each epoch reached (after
Khattak et al. 2023, "Self-regulating Prompts: Foundational Model Adaptation without
Forgetting").

PromptSRC regulates prompt learning in two ways that carry over to a language model's
weights:

1. mutual agreement: a consistency term between the model being trained and the frozen
   model it started from, here the token-level KL of `ckl.methods.distill.lwf` on the
   training batch (`weight`, `temperature`);
2. Gaussian-weighted self-ensembling: the weights at the end of each epoch e (1..E) are
   averaged with weights N(e; `mean` * E, (`std` * E)^2), so that neither the first epochs
   (too little learned) nor the last (most overfitted) dominate. The stage ends at that
   average. The part keeps a running weighted sum (one copy of the trainable weights),
   not every epoch's weights.

Deviations: PromptSRC learns prompts on a frozen CLIP and also regularises features and
text diversity; here the trained weights are whatever the method's scope trains (all of
them, or composed after a scope, `lora+promptsrc`, the adapter before it is merged), and
only the logit agreement is used. With
`train.until` the average runs over the epochs trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.distill._frozen import FrozenCopy
from ckl.methods.distill.lwf import distillation_kl


@dataclass
class PromptSrcConfig:
    weight: float = field(default=1.0, metadata={"help": "weight of the agreement term (KL to the frozen stage-start model) added to the next-token loss"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the agreement term (scaled by T^2)"})
    mean: float = field(default=0.5, metadata={"help": "centre of the Gaussian over epochs, as a share of the stage's epochs"})
    std: float = field(default=0.25, metadata={"help": "width of the Gaussian over epochs, as a share of the stage's epochs (> 0)"})

    def __post_init__(self) -> None:
        check_number(self.weight, "weight", low=0)
        check_number(self.temperature, "temperature", low=0, low_open=True)
        check_number(self.mean, "mean", low=0, high=1)
        check_number(self.std, "std", low=0, low_open=True)


def epoch_weight(epoch: int, epochs: int, mean: float, std: float) -> float:
    """The Gaussian weight of epoch `epoch` (1-based) of `epochs`, unnormalised."""
    centre, width = mean * epochs, std * epochs
    return math.exp(-0.5 * ((epoch - centre) / width) ** 2)


class PromptSrc(Part):
    name = "promptsrc"
    reads_batch = True

    def __init__(self, config: PromptSrcConfig):
        self.config = config
        self.teacher: FrozenCopy | None = None
        self.model = None
        self.ctx: StageContext | None = None
        self.params: list[torch.nn.Parameter] = []  # the trainable weights, as training sees them
        self.total: list[torch.Tensor] | None = None  # their running weighted sum
        self.mass = 0.0
        self.epochs_seen = 0  # epochs whose end weights are in the sum

    def prepare(self, model, ctx: StageContext):
        self.teacher = FrozenCopy(model)
        self.model, self.ctx = model, ctx
        self.total, self.mass, self.epochs_seen = None, 0.0, 0
        return model

    def _add(self) -> None:
        """Add the weights at the end of the next epoch to the running sum."""
        self.epochs_seen += 1
        w = epoch_weight(self.epochs_seen, max(1, self.ctx.epochs), self.config.mean, self.config.std)
        if self.total is None:
            self.params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.no_grad():
            if self.total is None:
                self.total = [w * p.detach().float() for p in self.params]
            else:
                for acc, p in zip(self.total, self.params):
                    acc.add_(p.detach().float(), alpha=w)
        self.mass += w

    def select_facts(self, facts, ctx: StageContext):
        if ctx.epoch > self.epochs_seen:  # rendering epoch e's documents: epoch e - 1 has ended
            self._add()
        return facts

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.teacher is None or self.config.weight == 0 or batch is None:
            return None
        T = float(self.config.temperature)
        return self.config.weight * T * T * distillation_kl(outputs.logits, self.teacher.logits(batch), batch["attention_mask"], T)

    def finish(self, model, ctx: StageContext):
        if self.model is not None and ctx.epoch + 1 > self.epochs_seen:  # the last epoch's end
            self._add()
        if self.total is not None and self.mass > 0:
            with torch.no_grad():
                for p, acc in zip(self.params, self.total):
                    p.copy_((acc / self.mass).to(p.dtype))
        self.teacher = self.model = self.total = None
        self.params = []
        return model


register_part("promptsrc", PromptSrcConfig, PromptSrc, "PromptSRC-style self-regulation: KL agreement with the frozen stage-start model and a Gaussian-weighted average of the epochs' weights")
