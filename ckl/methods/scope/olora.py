"""O-LoRA: a new LoRA per stage, trained orthogonal to the earlier stages' LoRA subspaces
(Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning").

A scope part built on `lora` (PEFT; the same config fields). Each stage trains a fresh
LoRA (A_t, B_t) on every target layer, with the paper's orthogonality penalty

    loss += orthogonal * sum over layers sum_{i < t} ||A_i A_t^T||_F^2

where the rows of A_i (r x d_in) span the input subspace stage i's LoRA reads from:
driving A_i A_t^T to zero makes the new update act on directions the earlier updates do
not, so it interferes less with them. At the end of the stage the LoRA is merged into
the weights (as the `lora` part does), and its A matrices join the part's state (one
stacked (sum of earlier ranks) x d_in matrix per layer), checkpointed with the run.

Deviations: the paper keeps the earlier LoRAs as separate frozen adapters (W + sum_i B_i
A_i, mathematically the merged weights) and adds an L2 term on the new LoRA's
parameters; here earlier LoRAs are merged (only their A's are needed for the penalty) and
the L2 term is left out (compose `l2` for a pull toward the stage-start weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.penalty.l2 import canonical_name
from ckl.methods.scope.lora import Lora, LoraConfig


@dataclass
class OLoraConfig:
    r: int = field(default=8, metadata={"help": "rank of each stage's LoRA"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules; 'all-linear' = every linear layer but the output head"})
    orthogonal: float = field(default=0.5, metadata={"help": "lambda_1: loss += lambda_1 * sum ||A_earlier A_new^T||_F^2 (the paper's 0.5)"})

    def __post_init__(self) -> None:
        LoraConfig(r=self.r, alpha=self.alpha, target_modules=self.target_modules)  # same checks, same messages
        check_number(self.orthogonal, "orthogonal", low=0)


def lora_a_matrices(model) -> dict[str, torch.nn.Parameter]:
    """The active (trainable) LoRA A weight of every adapted layer, (r, d_in), by the
    layer's canonical name."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A and layer.lora_A[adapter].weight.requires_grad:
                    out[canonical_name(name)] = layer.lora_A[adapter].weight
    return out


def subspace_overlap(earlier: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between the rows of `new` (r, d) and of `earlier` (R, d): 0 when
    the new rows are orthogonal to every earlier row, 1 / d for random directions."""
    a = torch.nn.functional.normalize(earlier.float(), dim=1)
    b = torch.nn.functional.normalize(new.float(), dim=1)
    return (a @ b.T).pow(2).mean()


class OLora(Part):
    name = "olora"

    def __init__(self, config: OLoraConfig):
        self.config = config
        self.lora = Lora(LoraConfig(r=config.r, alpha=config.alpha, target_modules=config.target_modules))
        self.earlier: dict[str, torch.Tensor] = {}  # layer -> stacked A rows of earlier stages (CPU)
        self.current: dict[str, torch.nn.Parameter] = {}
        self._on_device: dict[str, torch.Tensor] = {}

    def prepare(self, model, ctx: StageContext):
        model = self.lora.prepare(model, ctx)
        self.current = lora_a_matrices(model)
        self._on_device = {}
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.config.orthogonal == 0 or not self.earlier:
            return None
        total = None
        for name, a_new in self.current.items():
            if name not in self.earlier:
                continue
            if name not in self._on_device:
                self._on_device[name] = self.earlier[name].to(a_new.device, a_new.dtype)
            term = (self._on_device[name] @ a_new.T).pow(2).sum()  # ||A_earlier A_new^T||_F^2
            total = term if total is None else total + term
        return None if total is None else self.config.orthogonal * total

    def finish(self, model, ctx: StageContext):
        for name, a_new in self.current.items():
            rows = a_new.detach().to("cpu", torch.float32, copy=True)
            self.earlier[name] = torch.cat([self.earlier[name], rows]) if name in self.earlier else rows
        self.current, self._on_device = {}, {}
        return self.lora.finish(model, ctx)

    def state_dict(self) -> dict:
        return {f"A.{name}": t for name, t in self.earlier.items()}

    def load_state_dict(self, state: dict) -> None:
        self.earlier = {key[2:]: t for key, t in state.items() if key.startswith("A.")}


register_part("olora", OLoraConfig, OLora, "O-LoRA: a new LoRA per stage kept orthogonal to earlier stages' LoRA subspaces, then merged")
