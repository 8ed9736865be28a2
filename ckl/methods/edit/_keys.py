"""Batched forward passes that read module inputs/outputs at chosen token positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ckl.methods.edit._prompts import PromptBatch
from ckl.model.layers import token_view


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def capture(
    model: nn.Module,
    batch: PromptBatch,
    taps: Sequence[tuple[nn.Module, str]],
    positions: torch.Tensor | None = None,
    chunk: int = 512,
) -> list[torch.Tensor]:
    """Run `batch` through the model's decoder (no LM head) and return, for each tap
    (module, "in" | "out"), that module's input or output at `positions` (default: each
    row's subject last token) as a float32 (B, d) tensor, in `chunk`-row forward passes."""
    positions = batch.subject_pos if positions is None else positions
    device = next(model.parameters()).device
    found: list[list[torch.Tensor]] = [[] for _ in taps]
    current: dict[str, torch.Tensor] = {}

    def hook_for(i: int, where: str):
        def grab(x: torch.Tensor) -> None:
            found[i].append(token_view(x, current["width"])[current["rows"], current["pos"]].float())

        if where == "in":
            return lambda module, args, kwargs: grab(args[0] if args else next(iter(kwargs.values())))
        return lambda module, args, kwargs, output: grab(_first(output))

    handles = []
    try:
        for i, (module, where) in enumerate(taps):
            if where == "in":
                handles.append(module.register_forward_pre_hook(hook_for(i, where), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook_for(i, where), with_kwargs=True))
        decoder = model.base_model
        for start in range(0, len(batch), chunk):
            rows = torch.arange(start, min(start + chunk, len(batch)))
            part = batch.select(rows).to(device)
            current["rows"] = torch.arange(len(rows), device=device)
            current["pos"] = positions[rows].to(device)
            current["width"] = part.input_ids.shape[1]
            decoder(input_ids=part.input_ids, attention_mask=part.attention_mask)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(parts) for parts in found]


def group_mean(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(n_groups, d) mean of the rows of `values` (B, d) per group."""
    sums = torch.zeros(n_groups, values.shape[1], dtype=values.dtype, device=values.device)
    sums.index_add_(0, group.to(values.device), values)
    counts = torch.bincount(group.to(values.device), minlength=n_groups).clamp(min=1).to(values.dtype)
    return sums / counts[:, None]


def context_weighted_mean(values: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """(n_groups, d): per group, the mean of its bare-prompt row and of the mean of its
    context-prefixed rows, each weighted 1/2 (MEMIT's reference code averages the key over
    the bare prompt and over its generated contexts as two equal halves; a group with no
    context rows gets its bare row)."""
    first = batch.first_rows().to(values.device)
    bare = values[first]
    context = torch.ones(len(batch), dtype=torch.bool, device=values.device)
    context[first] = False
    group = batch.group.to(values.device)
    sums = torch.zeros_like(bare).index_add_(0, group[context], values[context])
    counts = torch.bincount(group[context], minlength=batch.n_groups).to(values.dtype)[:, None]
    return torch.where(counts > 0, (bare + sums / counts.clamp(min=1)) / 2, bare)
