"""Where the editable parts of a causal LM are, derived from the model itself.

An editor needs, per layer, the transformer block (its output is the residual stream)
and the MLP's output projection (the "value" matrix W that maps a key k, the MLP's
hidden activation, to the value v = W k written into the residual stream). GPT-2 keeps
that projection as a `Conv1D` with weight (in, out); most other models use `nn.Linear`
with weight (out, in). `add_update` hides the difference: deltas are always (out, in).
"""

from __future__ import annotations

import torch
from torch import nn

# Attribute paths to the list of blocks, and names of the MLP output projection, in the
# model families transformers ships (first match wins).
_BLOCK_PATHS = ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers", "transformer.blocks", "layers")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_PROJ_NAMES = ("c_proj", "down_proj", "dense_4h_to_h", "fc_out", "fc2", "w2")


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks, in order.

    Raises:
        ValueError: no known block list (the message names the paths tried).
    """
    for path in _BLOCK_PATHS:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return obj
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__} (tried {', '.join(_BLOCK_PATHS)})")


def mlp_output_projection(model: nn.Module, layer: int) -> nn.Module:
    """The MLP output projection of block `layer` (GPT-2 `mlp.c_proj`, Llama `mlp.down_proj`).

    Raises:
        ValueError: `layer` out of range, or no known projection in the block.
    """
    stack = blocks(model)
    if not 0 <= layer < len(stack):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(stack) - 1}")
    block = stack[layer]
    for mlp_name in _MLP_NAMES:
        mlp = getattr(block, mlp_name, None)
        if mlp is None:
            continue
        for proj in _PROJ_NAMES:
            module = getattr(mlp, proj, None)
            if module is not None and _weight(module) is not None:
                return module
    raise ValueError(f"cannot find the MLP output projection of layer {layer} in {type(block).__name__}")


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
