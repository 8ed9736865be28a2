"""Selective LoRA: a learned gate on every LoRA block, pushed to zero by a sparsity penalty,
so that only the few blocks the stage needs change the model (after "Fine Tuning without
Catastrophic Forgetting via Selective Low Rank Adaptation", 2025).

Composed after LoRA, which it needs: `lora+lora_gates`. Each LoRA-wrapped linear layer m
(a "block" of the paper) gets a scalar gate g_m (starting at `init`) that multiplies its
adapter's output:

    y = W x + g_m * (alpha / r) B A x,        loss += sparsity * sum_m |g_m|

The L1 penalty is the indicator's convex surrogate: gates of blocks the new facts do not
need fall towards zero. At the end of the stage every gate is folded into its adapter
(B <- g_m B) and the blocks whose |g_m| fell below `threshold` are switched off (B <- 0),
before LoRA merges: the merged update touches only the selected blocks. The part reports
how many blocks stayed on (`active`, in its state and the method's summary).

Under Adam every parameter moves about lr per step whatever its gradient's size, so a gate
kept as a plain parameter moves ~0.03 in a stage and never closes; the gate is therefore
`gate_scale` times its parameter (a learning-rate multiplier for the gates alone).

Deviations: the paper selects blocks with an indicator function trained with a straight-
through estimator; here the gate is continuous during training (an L1-penalised scale)
and becomes an indicator only at the end (the threshold), which needs no estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.scope.attached import host_model

GATES = "ckl_lora_gates"


@dataclass
class LoraGatesConfig:
    sparsity: float = field(default=1e-3, metadata={"help": "weight of the L1 penalty on the gates (sum over LoRA blocks of |gate|)"})
    threshold: float = field(default=0.1, metadata={"help": "a block whose |gate| ends below this is switched off (its update dropped)"})
    init: float = field(default=1.0, metadata={"help": "every gate's starting value"})
    gate_scale: float = field(default=100.0, metadata={"help": "gate = gate_scale * its parameter: under Adam a step moves a parameter by about lr, so this is the gates' learning-rate multiplier (at 1 they move ~lr per step and cannot close within a stage)"})

    def __post_init__(self) -> None:
        check_number(self.sparsity, "sparsity", low=0)
        check_number(self.threshold, "threshold", low=0)
        check_number(self.init, "init", low=0, low_open=True)
        check_number(self.gate_scale, "gate_scale", low=0, low_open=True)


def lora_blocks(model) -> dict[str, torch.nn.Module]:
    """Every LoRA-wrapped layer of the model (PEFT's LoraLayer), by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and m.active_adapters}


class LoraGates(Part):
    name = "lora_gates"
    requires = frozenset({"lora"})
    reads_batch = False

    def __init__(self, config: LoraGatesConfig):
        self.config = config
        self.gates: torch.nn.ParameterDict | None = None
        self.handles: list = []
        self.blocks: dict[str, torch.nn.Module] = {}
        self.active: list[int] = []  # per stage: blocks left on

    def prepare(self, model, ctx: StageContext):
        self.blocks = lora_blocks(model)
        if not self.blocks:
            raise ValueError("lora_gates: the model has no LoRA blocks; compose it after lora (lora+lora_gates)")
        device = next(model.parameters()).device
        self.gates = torch.nn.ParameterDict({
            name.replace(".", "__"): torch.nn.Parameter(torch.full((), self.config.init / self.config.gate_scale, device=device)) for name in self.blocks
        })
        host_model(model).add_module(GATES, self.gates)  # a submodule: the loop's optimiser trains the gates
        scale = self.config.gate_scale
        for name, block in self.blocks.items():
            gate = self.gates[name.replace(".", "__")]
            for adapter in block.active_adapters:
                self.handles.append(block.lora_B[adapter].register_forward_hook(lambda mod, args, out, gate=gate: out * (scale * gate).to(out.dtype)))
        return model

    def loss(self, model, batch, outputs, step: int) -> torch.Tensor | None:
        if self.gates is None or self.config.sparsity == 0:
            return None
        return self.config.sparsity * self.config.gate_scale * torch.stack([g.abs() for g in self.gates.values()]).sum()

    def finish(self, model, ctx: StageContext):
        if self.gates is None:
            return model
        for handle in self.handles:
            handle.remove()
        on = 0
        with torch.no_grad():
            for name, block in self.blocks.items():
                g = self.config.gate_scale * float(self.gates[name.replace(".", "__")].detach())
                factor = g if abs(g) >= self.config.threshold else 0.0
                on += factor != 0.0
                for adapter in block.active_adapters:
                    block.lora_B[adapter].weight.mul_(factor)
        delattr(host_model(model), GATES)
        self.active.append(on)
        self.gates, self.handles, self.blocks = None, [], {}
        return model

    def gate_values(self) -> dict[str, float]:
        """The gates as they are now (during a stage), by LoRA block."""
        return {} if self.gates is None else {k.replace("__", "."): self.config.gate_scale * float(v.detach()) for k, v in self.gates.items()}

    def state_dict(self) -> dict:
        return {"active": list(self.active)}

    def load_state_dict(self, state: dict) -> None:
        self.active = [int(a) for a in state.get("active", [])]


register_part("lora_gates", LoraGatesConfig, LoraGates, "selective LoRA: an L1-penalised gate per LoRA block, the blocks whose gate falls below a threshold switched off before merging (compose as lora+lora_gates)")
