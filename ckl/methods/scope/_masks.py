"""Scopes that train only some elements of a weight: a bool mask per weight (True = may
train), applied to the gradient after backward and before clipping and the optimiser
step. With AdamW and no weight decay (ckl's default) an element whose gradient is always
zero never moves, bit for bit. Shared by `ssu` and `loki`."""

from __future__ import annotations

import torch

from ckl.methods.penalty.l2 import base_parameters
from ckl.methods.scope._base import ScopePart


class MaskedUpdates(ScopePart):
    masks: dict[str, torch.Tensor]  # canonical parameter name -> bool tensor of its shape (True = may train)

    def filter_gradients(self, model, step: int) -> None:
        for name, p in base_parameters(model).items():
            mask = self.masks.get(name)
            if mask is not None and p.grad is not None:
                p.grad.mul_(mask.to(device=p.grad.device, dtype=p.grad.dtype))


def unit_mask(shape: torch.Size, units: torch.Tensor, transposed: bool, along_output: bool = True) -> torch.Tensor:
    """An element mask of a weight `shape` that is True on the given units: output units
    (along_output) or input units, for a weight stored (in, out) when `transposed` (GPT-2's
    Conv1D) or (out, in) (nn.Linear)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    column = transposed == along_output  # (in, out) output units and (out, in) input units are columns
    if column:
        mask[:, units] = True
    else:
        mask[units, :] = True
    return mask
