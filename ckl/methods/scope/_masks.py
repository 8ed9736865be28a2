"""Scopes that train only some elements of a weight: a bool mask per weight (True = may
train), applied to the gradient after backward and before clipping and the optimiser
step. With AdamW and no weight decay (ckl's default) an element whose gradient is always
zero never moves, bit for bit. Shared by `ssu` and `loki`."""

from __future__ import annotations

import torch

from ckl.methods.penalty.l2 import base_parameters
from ckl.methods.scope._base import ScopePart


class MaskedUpdates(ScopePart):
    """Refused with adapter scopes (the masks act on the base weights, which adapters leave
    frozen while the adapters train unmasked) and with weight decay (AdamW decays a weight
    whose gradient is zero). Its gradient filter runs after every other part's (`filter_last`),
    so a projection (A-GEM) cannot put gradient back into masked weights."""

    masks: dict[str, torch.Tensor]  # canonical parameter name -> bool tensor of its shape (True = may train)
    incompatible = frozenset({"lora", "olora", "loramoe", "kadapter", "expansion"})
    filter_last = True

    def check(self, train) -> str | None:
        if train.weight_decay > 0:
            return f"weight_decay {train.weight_decay} would move the masked weights (AdamW decays weights whose gradient is zero); use 0"
        return None

    def filter_gradients(self, model, step: int) -> None:
        params = base_parameters(model)
        missing = [name for name in self.masks if name not in params]
        if missing:  # e.g. FSDP's flattened parameters: masking nothing silently would be wrong
            raise ValueError(f"{self.name}: weights {missing[:3]} not found in the model being trained (FSDP is not supported; DDP is)")
        for name, mask in self.masks.items():
            p = params[name]
            if p.grad is not None:
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
