"""Freeze the bottom layers so only the upper blocks train (Zheng et al. 2025, "Spurious
Forgetting in Continual Learning of Language Models": forgetting is largely a disrupted
alignment in the bottom layers, so freezing them preserves earlier knowledge).

A scope part: `prepare` sets requires_grad = False on the bottom `layers` blocks and, with
`embeddings`, on every parameter before the blocks (token and position embeddings; a tied
output head is the token embedding and freezes with it); `finish` makes those parameters
trainable again, so the next stage starts from a fully trainable model. Deviation: the
paper freezes the bottom layers together with task-vector style analysis; here the
freezing is the whole method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import StageContext, register_part
from ckl.model.layers import parameter_depths
from ckl.methods.scope._base import ScopePart


@dataclass
class FreezeConfig:
    layers: int = field(default=1, metadata={"help": "number of bottom transformer blocks to freeze"})
    embeddings: bool = field(default=True, metadata={"help": "also freeze the parameters before the blocks (token / position embeddings)"})

    def __post_init__(self) -> None:
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise ConfigError("layers", f"layers must be an integer >= 0, got {self.layers!r}")
        if not isinstance(self.embeddings, bool):
            raise ConfigError("embeddings", f"embeddings must be true or false, got {self.embeddings!r}")


class Freeze(ScopePart):
    name = "freeze"

    def __init__(self, config: FreezeConfig):
        self.config = config
        self.frozen: list[torch.nn.Parameter] = []

    def prepare(self, model, ctx: StageContext):
        depths, blocks = parameter_depths(model)
        if self.config.layers > blocks:
            raise ValueError(f"freeze.layers: {self.config.layers} is more than the model's {blocks} blocks")
        self.frozen = []
        bottom = lambda depth: 0 <= depth < self.config.layers or (depth < 0 and self.config.embeddings)  # noqa: E731
        self.freeze(p for name, p in model.named_parameters() if bottom(depths[name]))
        return model


register_part("freeze", FreezeConfig, Freeze, "freeze the bottom blocks (and embeddings); only the upper blocks train")
