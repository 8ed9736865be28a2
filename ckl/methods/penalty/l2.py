"""L2-SP: pull the weights toward where the stage started (Li et al. 2018, "Explicit
Inductive Bias for Transfer Learning with Convolutional Networks").

The added loss is (strength / 2) * ||theta - theta_start||^2, where theta_start are the
weights at the start of the stage (the previous stage's result; the base model before
stage 1). Deviation from the paper: L2-SP anchors to the *pretrained* weights and puts a
separate plain L2 on new layers; here every stage re-anchors and there are no new layers.

This module also holds the small helpers every anchor penalty shares (EWC, RecAdam):
weights by a canonical name, so that a penalty reads the same on a plain model and on a
PEFT (LoRA) model. Under LoRA the weights the penalty sees are the *effective* weights
W + scale * B A of each adapted layer (gradients flow into the adapters); frozen weights
are left out, since they cannot move and their term is a constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import Part, StageContext, register_part

# prefixes that wrappers add to parameter names: DDP, torch.compile, PEFT
_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")


def canonical_name(name: str) -> str:
    """A parameter's name as the plain (unwrapped, unadapted) model spells it."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name.replace(".base_layer.", ".")


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def base_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Every weight of the underlying model (adapters excluded), by canonical name."""
    model = _unwrap(model)
    return {canonical_name(n): p for n, p in model.named_parameters() if ".lora_" not in n}


def trainable_weights(model) -> dict[str, torch.Tensor]:
    """The weights training can move, by canonical name, differentiably.

    Plain model: every parameter with requires_grad. LoRA layer: base weight + the
    active adapters' delta (shape of the base weight), so a penalty on it trains the
    adapters. Parameters of frozen layers are left out.
    """
    model = _unwrap(model)
    out: dict[str, torch.Tensor] = {}
    layers = _lora_layers(model)
    for name, layer in layers.items():
        adapters = [a for a in layer.active_adapters if a in layer.lora_A and layer.lora_A[a].weight.requires_grad]
        if not adapters or getattr(layer, "merged", False):
            continue
        weight = layer.get_base_layer().weight
        out[canonical_name(name) + ".weight"] = weight + sum(layer.get_delta_weight(a) for a in adapters)
    inside = tuple(name + "." for name in layers)
    for name, p in model.named_parameters():
        if p.requires_grad and not (inside and name.startswith(inside)):
            out[canonical_name(name)] = p
    return out


def snapshot(model) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights (adapters excluded), by canonical name."""
    with torch.no_grad():
        return {n: p.detach().to("cpu", copy=True) for n, p in base_parameters(model).items()}


class AnchorCache:
    """CPU tensors by name, with copies on the training device made once per stage."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None):
        self.tensors = tensors or {}
        self._on: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        if key not in self._on:
            self._on[key] = self.tensors[name].to(like.device, like.dtype)
        return self._on[key]


def squared_distance(model, anchor: AnchorCache, weight: AnchorCache | None = None) -> torch.Tensor | None:
    """sum over trainable weights present in the anchor of w * (theta - anchor)^2
    (w = 1 without `weight`); None when no trainable weight has an anchor."""
    total = None
    for name, theta in trainable_weights(model).items():
        if name not in anchor.tensors:
            continue
        diff = (theta - anchor.get(name, theta)).pow(2)
        term = (diff * weight.get(name, theta)).sum() if weight is not None else diff.sum()
        total = term if total is None else total + term
    return total


@dataclass
class L2Config:
    strength: float = field(default=0.01, metadata={"help": "lambda: loss += lambda/2 * ||theta - theta_stage_start||^2"})

    def __post_init__(self) -> None:
        check_number(self.strength, "strength", low=0)


class L2(Part):
    name = "l2"

    def __init__(self, config: L2Config):
        self.config = config
        self.anchor: AnchorCache | None = None

    def prepare(self, model, ctx: StageContext):
        self.anchor = AnchorCache(snapshot(model))  # re-anchored every stage: nothing to remember
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.anchor is None or self.config.strength == 0:
            return None
        distance = squared_distance(model, self.anchor)
        return None if distance is None else 0.5 * self.config.strength * distance

    def finish(self, model, ctx: StageContext):
        self.anchor = None  # free the copy
        return model


register_part("l2", L2Config, L2, "L2-SP: pull the weights toward the stage-start weights")
