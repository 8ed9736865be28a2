"""Scopes that train only some weights during a stage (block expansion, freezing by
layer, parallel adapters, mixtures of LoRA experts): `freeze` takes requires_grad away
from the weights the stage must not move, and `finish` gives it back at the stage's end,
so the next stage (or another part) sees the model as it was."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ckl.methods.base import Part, StageContext


class ScopePart(Part):
    frozen: list[torch.nn.Parameter]

    def freeze(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Freeze the trainable ones of `params` for this stage."""
        for p in params:
            if p.requires_grad:
                p.requires_grad_(False)
                self.frozen.append(p)

    def finish(self, model, ctx: StageContext):
        for p in self.frozen:
            p.requires_grad_(True)
        self.frozen = []
        return model
