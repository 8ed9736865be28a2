"""A frozen copy of a model that gives its logits on a batch: the teacher of the
distillation parts (`lwf`, `ser`), kept for one stage."""

from __future__ import annotations

import copy

import torch


class FrozenCopy:
    """The model as it is now, frozen (eval mode, no gradients), moved to the batch's
    device on first use (the loop moves the trained model, not the copy)."""

    def __init__(self, model) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def logits(self, batch: dict) -> torch.Tensor:
        """(B, L, V) logits on the batch's input ids and attention mask."""
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
