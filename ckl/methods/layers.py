"""Layer structure derived from the model, shared by the parts that act per block.

No part names module paths per architecture: the stack of transformer blocks is found as
the largest `ModuleList` of same-typed modules (`transformer.h` in GPT-2, `model.layers`
in Llama-style models, `gpt_neox.layers`, ...), and a parameter's depth follows from
where its name sits relative to that list.
"""

from __future__ import annotations

import torch


def find_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's stack of transformer blocks.

    Returns:
        (prefix, blocks): the ModuleList's qualified name (e.g. "transformer.h", or
        "base_model.model.transformer.h" under PEFT) and the list itself.

    Raises:
        ValueError: no ModuleList of same-typed blocks with parameters exists.
    """
    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if any(piece.startswith("ckl_") for piece in name.split(".")):
            continue  # modules a part attached beside the model (ckl.methods.attached), not its blocks
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        # the block stack holds every per-layer list (heads, experts) inside it, so it is the largest
        if size > 0 and (best is None or size > best[0]):
            best = (size, name, module)
    if best is None:
        raise ValueError(
            f"cannot find the transformer blocks of {type(model).__name__}: expected a ModuleList of "
            "identical blocks (like GPT-2's transformer.h or Llama's model.layers)"
        )
    return best[1], best[2]


def parameter_depths(model: torch.nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's depth: its block's index 0..L-1, -1 for parameters before the
    blocks (embeddings), L for those after them (final norm, output head).

    Returns:
        (depth by parameter name as `named_parameters` spells it, L).
    """
    prefix, blocks = find_blocks(model)
    depths: dict[str, int] = {}
    seen_blocks = False
    for name, _ in model.named_parameters():
        if name.startswith(prefix + "."):
            depths[name] = int(name[len(prefix) + 1:].split(".", 1)[0])
            seen_blocks = True
        else:
            depths[name] = len(blocks) if seen_blocks else -1
    return depths, len(blocks)
