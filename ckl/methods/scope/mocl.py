"""MoCL-P: one LoRA module per stage, composed for every input by matching it against each
stage's learned key, low-weight modules pruned (after Wang et al. 2024, "Rehearsal-free
Modular and Compositional Continual Learning for Language Models", MoCL, and its pruned
variant MoCL-P), on LoRAMoE's attached-module machinery (`ckl.methods.scope.loramoe`).

A scope part on a frozen model. Every target layer holds, for each stage s so far, a LoRA
module (A_s, B_s) and a key k_s; a token's input x to the layer is composed as

    y = W x + (alpha / r) * sum_s w_s(x) B_s A_s x,   w(x) = softmax_s(cos(x, k_s) / tau)

with every w_s below `prune` set to zero (and the rest renormalised) at evaluation, so a
pruned module is not computed at all (MoCL-P's pruning; the share of (token, module)
pairs pruned over every evaluation so far is a row note). A stage adds a new module (B
zero, so it adds nothing of its own at first; the earlier modules' weights shrink by the
share its key takes) and a key; only they train: the module by the next-token loss, the key also by MoCL's
matching loss, `match` * mean over tokens of (1 - cos(x, k_new)), which pulls the new key
towards the inputs of the stage's data. Earlier modules and keys are frozen.

Deviations: MoCL matches a sequence-level feature of the input against task keys; here
the query is each token's own hidden state at the layer, because a feature pooled over the
sequence would let later tokens (a probe's answer) steer how earlier ones are computed,
and ckl's packed scorer puts several answers in one row. The modules are LoRA on the
feed-forward layers (the paper uses prefix or LoRA modules on every layer), and pruning is
by composition weight at evaluation, not by the paper's importance criterion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import check_number
from ckl.methods.base import StageContext, register_part
from ckl.methods.scope.attached import attach
from ckl.methods.scope.loramoe import LoraMoe, LoraMoeConfig, down_projections_and_router


@dataclass
class MoclConfig(LoraMoeConfig):
    experts: int = field(default=2, metadata={"help": "unused by mocl (one module per stage); kept for LoRAMoE's shared options"})
    balance: float = field(default=0.0, metadata={"help": "unused by mocl (its router is key matching, not a learned softmax)"})
    temperature: float = field(default=0.1, metadata={"help": "tau of the cosine key matching"})
    match: float = field(default=0.1, metadata={"help": "weight of the key-matching loss mean(1 - cos(x, k_new))"})
    prune: float = field(default=0.05, metadata={"help": "at evaluation, modules whose composition weight is below this are not computed"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.temperature, "temperature", low=0, low_open=True)
        check_number(self.match, "match", low=0)
        check_number(self.prune, "prune", low=0, high=1)


class StageModules(torch.nn.Module):
    """One layer's per-stage LoRA modules and keys: frozen (`*_old`) and the current stage's."""

    def __init__(self, d_in: int, d_out: int, r: int, scale: float, temperature: float, prune: float):
        super().__init__()
        self.scale, self.temperature, self.prune, self.r = scale, temperature, prune, r
        self.d_in, self.d_out = d_in, d_out
        self.A_old = torch.nn.Parameter(torch.zeros(0, r, d_in), requires_grad=False)
        self.B_old = torch.nn.Parameter(torch.zeros(0, d_out, r), requires_grad=False)
        self.keys_old = torch.nn.Parameter(torch.zeros(0, d_in), requires_grad=False)
        self.A_new = self.B_new = self.key_new = None
        self.pruned = [0, 0]  # (token, module) pairs pruned, and evaluated, at evaluation
        self.last_cos: torch.Tensor | None = None  # the training forward's cos(x, k_new), for the matching loss

    def add_stage(self) -> None:
        """Freeze the current stage's module (if any) and start a new one."""
        if self.A_new is not None:
            self.A_old = torch.nn.Parameter(torch.cat([self.A_old, self.A_new.detach()[None]]), requires_grad=False)
            self.B_old = torch.nn.Parameter(torch.cat([self.B_old, self.B_new.detach()[None]]), requires_grad=False)
            self.keys_old = torch.nn.Parameter(torch.cat([self.keys_old, self.key_new.detach()[None]]), requires_grad=False)
        device, dtype = self.A_old.device, self.A_old.dtype
        A, key = down_projections_and_router(self.d_in, 1, self.r)
        self.A_new = torch.nn.Parameter(A[0].to(device, dtype))
        self.B_new = torch.nn.Parameter(torch.zeros(self.d_out, self.r, device=device, dtype=dtype))
        self.key_new = torch.nn.Parameter(key[0].to(device, dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        A = torch.cat([self.A_old, self.A_new[None]])  # (S, r, in)
        B = torch.cat([self.B_old, self.B_new[None]])  # (S, out, r)
        keys = torch.cat([self.keys_old, self.key_new[None]])  # (S, in)
        cos = F.normalize(x, dim=-1) @ F.normalize(keys, dim=-1).T  # (..., S)
        weights = torch.softmax(cos / self.temperature, dim=-1)
        if self.training and torch.is_grad_enabled():
            self.last_cos = cos[..., -1]
        elif self.prune > 0 and weights.shape[-1] > 1:
            keep = weights >= self.prune
            self.pruned[0] += int((~keep).sum())
            self.pruned[1] += keep.numel()
            weights = weights * keep
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        h = torch.einsum("...i,sri->...sr", x, A) * weights.unsqueeze(-1)
        return self.scale * torch.einsum("...sr,sor->...o", h, B), weights

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint holds however many stages it had: take its shapes first
        for name in ("A_old", "B_old", "keys_old"):
            if prefix + name in state_dict:
                setattr(self, name, torch.nn.Parameter(torch.empty_like(state_dict[prefix + name]), requires_grad=False))
        for name in ("A_new", "B_new", "key_new"):
            if prefix + name in state_dict:
                setattr(self, name, torch.nn.Parameter(torch.empty_like(state_dict[prefix + name])))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Mocl(LoraMoe):
    name = "mocl"
    module_name = "ckl_mocl"

    def experts(self, d_in: int, d_out: int) -> torch.nn.Module:
        c = self.config
        return StageModules(d_in, d_out, c.r, c.alpha / c.r, c.temperature, c.prune)

    def prepare(self, model, ctx: StageContext):
        module = self._attach(model, ctx)
        self.processes = int(getattr(ctx.accelerator, "num_processes", 1) or 1)
        self.frozen = []
        self.freeze(model.parameters())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 1000 + ctx.stage)
            for layer in module.layers.values():
                layer.add_stage()
        attach(model, self.module_name, module, module.register)  # the new parameters' keys
        for layer in module.layers.values():
            for p in (layer.A_new, layer.B_new, layer.key_new):
                p.requires_grad_(True)
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.module is None:
            return None
        self.module.gates = []  # the mixture records gates for LoRAMoE's balance loss; unused here
        if self.config.match == 0:
            return None
        terms = []
        mask = batch.get("attention_mask") if batch is not None else None
        for layer in self.module.layers.values():
            cos, layer.last_cos = layer.last_cos, None
            if cos is None:
                continue
            weight = mask.to(cos.dtype) if mask is not None and mask.shape == cos.shape else torch.ones_like(cos)
            terms.append(((1 - cos) * weight).sum() / weight.sum().clamp_min(1))
        return self.config.match * torch.stack(terms).mean() if terms else None

    def stages(self) -> int:
        """Modules per layer (one per stage so far)."""
        layer = next(iter(self.module.layers.values())) if self.module is not None else None
        return 0 if layer is None else int(layer.A_old.shape[0]) + (layer.A_new is not None)

    def row_notes(self) -> dict:
        if self.module is None:
            return {}
        pruned = sum(layer.pruned[0] for layer in self.module.layers.values())
        seen = sum(layer.pruned[0] + layer.pruned[1] for layer in self.module.layers.values())
        return {"mocl_pruned_share": pruned / seen} if seen else {}


register_part("mocl", MoclConfig, Mocl, "MoCL-P: a LoRA module per stage on a frozen model, composed per token by cosine matching against learned stage keys, low-weight modules pruned at evaluation (kept attached)")
