"""Where a model's blocks and MLPs are, derived from the model itself: the one locator
that the parts acting per block, the editors and causal tracing share.

No part names module paths per architecture: the stack of transformer blocks is found as
the largest `ModuleList` of same-typed modules (`transformer.h` in GPT-2, `model.layers`
in Llama-style models, `gpt_neox.layers`, ...), and a parameter's depth follows from
where its name sits relative to that list.

An editor needs, per layer, the block's MLP and its output projection (the "value"
matrix W that maps a key k, the MLP's hidden activation, to the value v = W k written
into the residual stream). GPT-2 keeps that projection as a `Conv1D` with weight (in,
out); most other models use `nn.Linear` with weight (out, in). `add_update` hides the
difference: deltas are always (out, in).
"""

from __future__ import annotations

import torch
from torch import nn

# Names of a block's MLP, and of the MLP's output projection, in the model families
# transformers ships (first match wins).
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_PROJ_NAMES = ("c_proj", "down_proj", "dense_4h_to_h", "fc_out", "fc2", "w2")


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
            continue  # modules a part attached beside the model (ckl.methods.scope.attached), not its blocks
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


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks, in order (`find_blocks` without the prefix)."""
    return find_blocks(model)[1]


def block_mlp(model: nn.Module, layer: int) -> nn.Module:
    """The MLP module of block `layer` (negative counts from the end).

    Raises:
        ValueError: `layer` out of range or no MLP found in the block.
    """
    stack = blocks(model)
    if not -len(stack) <= layer < len(stack):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(stack) - 1}")
    block = stack[layer]
    for name in _MLP_NAMES:
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    for name in _PROJ_NAMES:  # no MLP module (OPT: fc1, fc2 sit in the block): its output projection stands for it
        if _weight(getattr(block, name, None) or nn.Module()) is not None:
            return getattr(block, name)
    raise ValueError(f"cannot find the MLP of layer {layer} in {type(block).__name__}")


def mlp_linears(model: nn.Module) -> set[str]:
    """Qualified names of the feed-forward linear layers of every block: those inside its
    MLP module, or, for a block without one (OPT), the linear layers that are the block's
    own children (its attention projections sit inside the attention module)."""
    prefix, stack = find_blocks(model)
    names: set[str] = set()
    for i, block in enumerate(stack):
        base = f"{prefix}.{i}"
        mlp = next((n for n in _MLP_NAMES if isinstance(getattr(block, n, None), nn.Module)), None)
        if mlp is not None:
            names |= {f"{base}.{mlp}.{sub}" for sub, m in getattr(block, mlp).named_modules() if sub and _weight(m) is not None}
        else:
            names |= {f"{base}.{n}" for n, m in block.named_children() if _weight(m) is not None}
    return names


def token_view(x: torch.Tensor, width: int) -> torch.Tensor:
    """A module's input or output as (batch, tokens, features): most blocks keep that
    shape, but some flatten the tokens before their MLP (OPT: (batch * tokens, features)),
    so a hook that reads or writes token positions views it back with the batch's width."""
    return x if x.dim() == 3 else x.view(-1, width, x.shape[-1])


def mlp_output_projection(model: nn.Module, layer: int) -> nn.Module:
    """The MLP output projection of block `layer` (GPT-2 `mlp.c_proj`, Llama `mlp.down_proj`).

    Raises:
        ValueError: `layer` out of range, or no known projection in the block.
    """
    stack = blocks(model)
    if not 0 <= layer < len(stack):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(stack) - 1}")
    module_mlp = block_mlp(model, layer)
    if any(getattr(stack[layer], proj, None) is module_mlp for proj in _PROJ_NAMES):
        return module_mlp  # a block without an MLP module: `block_mlp` is already its projection
    for proj in _PROJ_NAMES:
        module = getattr(module_mlp, proj, None)
        if module is not None and _weight(module) is not None:
            return module
    raise ValueError(f"cannot find the MLP output projection of layer {layer} in {type(stack[layer]).__name__}")


def _weight(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def is_transposed(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)."""
    return not isinstance(module, nn.Linear) and type(module).__name__ == "Conv1D"


def key_size(module: nn.Module) -> int:
    """Width of the keys (the projection's input)."""
    weight = _weight(module)
    return weight.shape[0] if is_transposed(module) else weight.shape[1]


def value_matrix(module: nn.Module) -> torch.Tensor:
    """W as (out, in), so that value = W @ key (+ bias). A view: do not modify it."""
    weight = _weight(module)
    return weight.T if is_transposed(module) else weight


@torch.no_grad()
def add_update(module: nn.Module, delta: torch.Tensor) -> None:
    """W += delta, with delta shaped (out, in) whatever the module's storage layout."""
    weight = _weight(module)
    delta = delta.to(device=weight.device, dtype=weight.dtype)
    weight.add_(delta.T if is_transposed(module) else delta)
