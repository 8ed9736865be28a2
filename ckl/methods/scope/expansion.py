"""Block expansion: grow the model by identity blocks and train only those (LLaMA Pro,
Wu et al. 2024, "LLaMA Pro: Progressive LLaMA with Block Expansion").

A scope part: `prepare` inserts `blocks` copies of existing blocks, interleaved evenly
(one after every k-th block, k = L // blocks, each a copy of the block before it), with
each copy's output projections (the linear layers that write into the residual stream:
GPT-2 `attn.c_proj` / `mlp.c_proj`, Llama `self_attn.o_proj` / `mlp.down_proj`) set to
zero, so every new block is the identity and the expanded model computes exactly the same
function. All original parameters are frozen; only the new blocks train. `finish` makes
every parameter trainable again.

The model stays expanded: the next stage (and the store, and `save_pretrained`) sees the
deeper model, with `config.num_hidden_layers` updated and each block's `layer_idx` (used
by the KV cache) renumbered, and a method that runs expansion in every stage grows the
model by `blocks` in every stage. Deviation: LLaMA Pro expands once, before domain
post-training; here it happens per stage. The copy is deterministic (no random init).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import StageContext, register_part
from ckl.model.layers import find_blocks
from ckl.methods.scope._base import ScopePart

# linear layers whose output is added to the residual stream, by the names GPT-2, Llama-style
# models, GPT-NeoX, Phi and OPT use
OUTPUT_PROJECTIONS = ("attn.c_proj", "mlp.c_proj", "self_attn.o_proj", "mlp.down_proj", "attention.dense", "self_attn.dense",
                      "mlp.dense_4h_to_h", "fc2", "self_attn.out_proj")


@dataclass
class ExpansionConfig:
    blocks: int = field(default=1, metadata={"help": "new identity blocks to insert per stage (at most the model's block count)"})

    def __post_init__(self) -> None:
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 1:
            raise ConfigError("blocks", f"blocks must be a positive integer, got {self.blocks!r}")


def identity_copy(block: torch.nn.Module) -> torch.nn.Module:
    """A copy of `block` whose output projections are zero, so it adds nothing to the
    residual stream (block(x) = x)."""
    new = copy.deepcopy(block)
    zeroed = 0
    with torch.no_grad():
        for name, module in new.named_modules():
            if name.endswith(OUTPUT_PROJECTIONS):
                for p in module.parameters(recurse=False):
                    p.zero_()
                zeroed += 1
    if zeroed == 0:
        raise ValueError(
            f"expansion: no output projection found in {type(block).__name__} "
            f"(looked for modules named *{', *'.join(OUTPUT_PROJECTIONS)})"
        )
    return new


def insertion_points(layers: int, blocks: int) -> list[int]:
    """Indices of the original blocks after which a copy goes: after every k-th block."""
    k = layers // blocks
    return [k * (i + 1) - 1 for i in range(blocks)]


class Expansion(ScopePart):
    name = "expansion"

    def __init__(self, config: ExpansionConfig):
        self.config = config
        self.frozen: list[torch.nn.Parameter] = []

    def prepare(self, model, ctx: StageContext):
        prefix, blocks = find_blocks(model)
        layers = len(blocks)
        if self.config.blocks > layers:
            raise ValueError(f"expansion.blocks: {self.config.blocks} is more than the model's {layers} blocks")
        if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
            raise ValueError("expansion: the model scales attention by layer index, so renumbering its blocks would change it")
        self.frozen = []
        self.freeze(model.parameters())
        points = set(insertion_points(layers, self.config.blocks))
        expanded, types = [], list(getattr(model.config, "layer_types", None) or [])
        new_types = []
        for i, block in enumerate(blocks):
            expanded.append(block)
            new_types += types[i:i + 1]
            if i in points:
                new = identity_copy(block)
                for p in new.parameters():
                    p.requires_grad_(True)
                expanded.append(new)
                new_types += types[i:i + 1]
        for i in range(len(blocks) - 1, -1, -1):
            del blocks[i]
        blocks.extend(expanded)
        for index, block in enumerate(blocks):
            for module in block.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = index
        model.config.num_hidden_layers = len(blocks)
        if len(types) == layers:
            model.config.layer_types = new_types
        return model


register_part("expansion", ExpansionConfig, Expansion, "LLaMA Pro: insert identity blocks and train only those (the model stays deeper)")
