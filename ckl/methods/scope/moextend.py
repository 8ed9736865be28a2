"""MoExtend: extend a mixture of experts with new experts for each new stage, the old
experts and their router rows frozen (Zhong et al. 2024, "MoExtend: Tuning New Experts for
Modality and Task Extension"), on LoRAMoE's machinery (`ckl.methods.scope.loramoe`).

A scope part. The first stage trains `experts` LoRA experts per target layer with their
router, as `loramoe` does. Every later stage first freezes every expert and router row
trained so far, then adds `new_experts` experts per layer, which alone train (with their
router rows). A new expert starts as a copy of the old expert that the stage's documents
route the most weight to in that layer (its load, measured before training), and the two
split that expert's router logit: both get l_j - log 2, so exp(l_j - log 2) * 2 = exp(l_j),
the softmax's normaliser and every other gate are unchanged, and each copy carries half of
g_j. Extending therefore leaves the model's outputs unchanged (tested), and training then
moves the copy away from the frozen original towards the new facts. The router gains a
per-expert logit bias for this (zero for the first stage's experts). LoRAMoE's balance loss
applies over all experts' gates (only the new rows and experts receive its gradient).

Persistence: like LoRAMoE's, the experts stay attached across stages (a token router
cannot be merged), their weights in the part's state; the number of experts grows by
`new_experts` per layer and stage, and a checkpoint restores whatever count it holds.

Deviations: the paper extends a pretrained MoE LLM (top-k routing) at the layers where
new-modality data's routing deviates most, and calibrates the router; here the base model
is dense, the first stage builds the mixture (dense routing, as LoRAMoE), every target
layer is extended, and new experts are initialised by splitting the most-used expert
instead of the paper's copy-and-calibrate.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_count
from ckl.data.stream import render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.scope.loramoe import LoraMoe, LoraMoeConfig, down_projections_and_router, expert_load
from ckl.train.batching import pack

TENSORS = ("A", "B", "router", "bias")


@dataclass
class MoExtendConfig(LoraMoeConfig):
    new_experts: int = field(default=1, metadata={"help": "experts added to every target layer at each stage after the first (copies of the most-used old experts)"})
    samples: int = field(default=128, metadata={"help": "most stage documents routed to measure the old experts' load"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count(self.new_experts, "new_experts")
        check_count(self.samples, "samples")
        if self.new_experts > self.experts:
            raise ConfigError("new_experts", f"new_experts ({self.new_experts}) must not exceed experts ({self.experts}): each new expert splits a different old one")


class ExtendingExperts(torch.nn.Module):
    """One linear layer's experts in two groups: frozen (`*_old`, trained in earlier
    stages) and trainable (`*_new`); forward sees them concatenated."""

    def __init__(self, d_in: int, d_out: int, experts: int, r: int, scale: float):
        super().__init__()
        self.scale = scale
        A, router = down_projections_and_router(d_in, experts, r)
        self.A_new, self.router_new = A, router
        self.B_new = torch.nn.Parameter(torch.zeros(experts, d_out, r))
        self.bias_new = torch.nn.Parameter(torch.zeros(experts))
        for name, t in (("A", A), ("B", self.B_new), ("router", router), ("bias", self.bias_new)):
            self.register_parameter(f"{name}_old", torch.nn.Parameter(t.detach()[:0].clone(), requires_grad=False))

    def full(self, name: str) -> torch.Tensor:
        return torch.cat([getattr(self, f"{name}_old"), getattr(self, f"{name}_new")])

    @property
    def counts(self) -> tuple[int, int]:
        return int(self.A_old.shape[0]), int(self.A_new.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.softmax(x @ self.full("router").T + self.full("bias"), dim=-1)  # (..., E)
        h = torch.einsum("...i,eri->...er", x, self.full("A")) * gates.unsqueeze(-1)  # (..., E, r)
        return self.scale * torch.einsum("...er,eor->...o", h, self.full("B")), gates

    @torch.no_grad()
    def extend(self, split: list[int]) -> None:
        """Freeze every expert, then add one trainable copy of each expert in `split` (old
        indices); each copy and its original take half of the original's routing weight."""
        old = {n: self.full(n).detach().clone() for n in TENSORS}
        half = math.log(2.0)
        index = torch.tensor(split, dtype=torch.long)
        new = {n: old[n][index].clone() for n in TENSORS}
        old["bias"][index] -= half
        new["bias"] -= half
        for n in TENSORS:
            setattr(self, f"{n}_old", torch.nn.Parameter(old[n], requires_grad=False))
            setattr(self, f"{n}_new", torch.nn.Parameter(new[n]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint holds however many experts its stage had: take its shapes first
        for n in TENSORS:
            for group, trainable in (("old", False), ("new", True)):
                key = f"{prefix}{n}_{group}"
                if key in state_dict:
                    t = state_dict[key]
                    setattr(self, f"{n}_{group}", torch.nn.Parameter(torch.empty_like(t), requires_grad=trainable))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MoExtend(LoraMoe):
    name = "moextend"
    module_name = "ckl_moextend"

    def __init__(self, config: MoExtendConfig):
        super().__init__(config)
        self.stages = 0  # stages trained so far (the first builds the mixture)
        self.split: list[dict[str, list[int]]] = []  # per extension: layer -> the old experts copied

    def experts(self, d_in: int, d_out: int) -> torch.nn.Module:
        c = self.config
        return ExtendingExperts(d_in, d_out, c.experts, c.r, c.alpha / c.r)

    def prepare(self, model, ctx: StageContext):
        module = self._attach(model, ctx)
        self.processes = int(getattr(ctx.accelerator, "num_processes", 1) or 1)
        self.frozen = []
        self.freeze(model.parameters())
        if self.stages > 0:
            load = self._load(model, module, ctx)
            chosen = {}
            for key, layer in module.layers.items():
                top = torch.argsort(load[key], descending=True, stable=True)[: self.config.new_experts].tolist()
                layer.extend(top)
                chosen[key] = top
            self.split.append(chosen)
        for layer in module.layers.values():
            for n in TENSORS:
                getattr(layer, f"{n}_new").requires_grad_(True)
                getattr(layer, f"{n}_old").requires_grad_(False)
        return model

    @torch.no_grad()
    def _load(self, model, module, ctx: StageContext) -> dict[str, torch.Tensor]:
        """Each layer's experts' share of the routing over the stage's documents, (E,)."""
        facts = list(ctx.change.taught()) if ctx.change is not None else []
        rng = random.Random(f"ckl.moextend/{ctx.seed}/{ctx.stage}")
        docs = render_documents(facts, ctx.relations, rng, qa_subjects=ctx.qa_subjects) if facts else []
        docs = rng.sample(docs, min(self.config.samples, len(docs))) or list(ctx.general_text[: self.config.samples])
        totals = {key: torch.zeros(sum(layer.counts)) for key, layer in module.layers.items()}
        if not docs:
            return totals
        input_ids, mask, _ = pack(ctx.tokenizer, docs, 256)
        device = next(model.parameters()).device
        seen: dict[str, torch.Tensor] = {}
        handles = [layer.register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, out[1]))
                   for key, layer in module.layers.items()]
        training = model.training
        model.eval()
        try:
            for start in range(0, len(input_ids), 8):
                ids, m = input_ids[start:start + 8].to(device), mask[start:start + 8].to(device)
                model(input_ids=ids, attention_mask=m)
                for key, gates in seen.items():
                    totals[key] += expert_load(gates.float(), m).cpu() * float(m.sum())
        finally:
            for h in handles:
                h.remove()
            model.train(training)
        return totals

    def finish(self, model, ctx: StageContext):
        model = super().finish(model, ctx)
        self.stages += 1
        return model

    def expert_counts(self) -> dict[str, tuple[int, int]]:
        """Per target layer: (frozen experts, trainable experts)."""
        return {} if self.module is None else {k: layer.counts for k, layer in self.module.layers.items()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stages": self.stages, "split": [dict(s) for s in self.split]}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state or {})
        self.stages = int(state.pop("stages", 0))
        self.split = [dict(s) for s in state.pop("split", [])]
        super().load_state_dict(state)


register_part("moextend", MoExtendConfig, MoExtend, "MoExtend: a LoRA-expert mixture that gains new experts (split copies of the most-used ones) at every stage while the old experts and router rows stay frozen (kept attached)")
