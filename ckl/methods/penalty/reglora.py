"""RegLoRA: keep each new LoRA update off the weight elements that earlier stages changed
most (Chen et al. 2025, "SEFE: Superficial and Essential Forgetting Eliminator for
Multimodal Continual Instruction Tuning", its RegLoRA). Compose after LoRA, which it
needs: `lora+reglora`.

After each stage (its adapter merged), every weight matrix's change over the stage is
read, and its `ratio` largest elements in magnitude join that matrix's key positions
(kept across stages). During later stages each step adds

    weight * sum over adapted matrices of || M * Delta_W ||^2,   Delta_W = the adapter's B A

(PEFT's own `get_delta_weight`, in the base weight's layout), so the new adapter writes
elsewhere and what earlier stages stored where they wrote it stays.
tests/methods/penalty/test_reglora.py shows it: the second stage's update at the first
stage's key positions is a small fraction of what it is without the penalty.

Deviations: SEFE takes the key positions from each task's own LoRA update and penalises
them with a fixed weight; here they come from the merged change of the whole stage (the
same thing when `lora` is the only part that trains). Its other half, answer-style
diversification against superficial forgetting, is a data recipe for instruction formats
ckl's streams do not have; the measure it targets, superficial forgetting, is in every
run's summary (`superficial`, docs/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.data.stream import Change
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.penalty.l2 import base_parameters, canonical_name


@dataclass
class RegLoraConfig:
    weight: float = field(default=1.0, metadata={"help": "weight of the penalty on the adapter's update at earlier stages' key positions"})
    ratio: float = field(default=0.02, metadata={"help": "share of each matrix's elements, the largest changes of a stage, that become key positions, in (0, 1]"})

    def __post_init__(self) -> None:
        check_number(self.weight, "weight", low=0)
        check_number(self.ratio, "ratio", low=0, low_open=True, high=1)


class RegLora(Part):
    name = "reglora"
    requires = frozenset({"lora"})

    def __init__(self, config: RegLoraConfig):
        self.config = config
        self.masks: dict[str, torch.Tensor] = {}  # canonical weight name -> bool key positions of earlier stages
        self.start: dict[str, torch.Tensor] = {}  # this stage's starting matrices (CPU)
        self.adapted: list[tuple[torch.nn.Module, str]] | None = None

    def prepare(self, model, ctx: StageContext):
        with torch.no_grad():
            self.start = {n: p.detach().to("cpu", copy=True) for n, p in base_parameters(model).items() if p.ndim == 2}
        self.adapted = None
        return model

    def _adapted(self, model) -> list[tuple[torch.nn.Module, str]]:
        """The LoRA layers whose base weight has key positions, with that weight's name."""
        out = []
        for name, module in model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and "default" in lora_a and hasattr(module, "get_delta_weight"):
                key = canonical_name(f"{name}.weight")
                if key in self.masks:
                    out.append((module, key))
        return out

    def loss(self, model, batch, outputs, step: int) -> torch.Tensor | None:
        if not self.masks or self.config.weight == 0:
            return None
        if self.adapted is None:
            self.adapted = self._adapted(model)
        terms = []
        for module, key in self.adapted:
            delta = module.get_delta_weight("default")  # (the base weight's layout), differentiable in A and B
            mask = self.masks[key].to(delta.device)
            terms.append(delta[mask].float().pow(2).sum())
        return self.config.weight * torch.stack(terms).sum() if terms else None

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        """After the stage (the adapter merged): its largest changes become key positions."""
        with torch.no_grad():
            for name, p in base_parameters(model).items():
                before = self.start.get(name)
                if before is None or before.shape != p.shape:
                    continue
                moved = (p.detach().cpu() - before).abs()
                if not moved.any():
                    continue
                k = max(1, int(round(self.config.ratio * moved.numel())))
                threshold = torch.topk(moved.flatten(), k).values[-1]
                new = (moved >= threshold) & (moved > 0)
                self.masks[name] = self.masks[name] | new if name in self.masks else new
        self.start = {}

    def state_dict(self) -> dict:
        return {name: mask.to(torch.uint8) for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict) -> None:
        self.masks = {name: t.bool() for name, t in state.items() if isinstance(t, torch.Tensor)}


register_part("reglora", RegLoraConfig, RegLora, "RegLoRA (SEFE): penalise the LoRA update at the weight elements earlier stages changed most (compose as lora+reglora; Chen et al. 2025)")
