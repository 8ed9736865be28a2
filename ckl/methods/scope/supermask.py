"""Exclusive supermask subnetworks: each stage learns which few weights of every block matrix
may change (a binary mask trained by a straight-through estimator, with gradient dropout on
its scores) and trains only those; a weight one stage changed is never selected again
(after Yadav & Bansal 2023, "Exclusive Supermask Subnetwork Training for Continual Learning",
ExSSNeT, and the gradient dropout of Zheng et al. 2023, "Regularized Mask Tuning").

A scope part. For every weight matrix W inside the transformer blocks the stage trains an
update D and mask scores S of W's shape; the matrix the model uses is

    W + D * M,    M = top-k(S) over the positions no earlier stage used,  k = density * |W|

(a hard 0/1 mask; in the backward pass dL/dS = dL/dM, the straight-through estimator of
edge-popup). D starts at zero, so the model is unchanged at the start; S starts at each
weight's |dL/dW| on the stage's documents (the positions where a first step would help
most), and with `grad_dropout` a random share of S's gradient is dropped every step. At
the end of the stage W <- W + D * M, and M's positions join the used set, checkpointed
with the run: the next stage's subnetwork is disjoint from every earlier one, so a later
stage never overwrites the weights an earlier one wrote.

Deviations: ExSSNeT learns a supermask over the frozen weights of a network trained from
scratch and then trains the selected weights that earlier tasks did not use; with a
pretrained LM masking weights out would erase its knowledge, so the mask selects which
weights the *update* may touch (learned jointly with the update, not in two phases), and
there is no k-NN task-identity transfer. Embeddings, norms and biases stay frozen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.stream import render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.penalty._estimate import gradient_statistic
from ckl.methods.penalty.l2 import canonical_name
from ckl.methods.scope._base import ScopePart
from ckl.methods.scope.ssu import block_matrices


@dataclass
class SupermaskConfig:
    density: float = field(default=0.05, metadata={"help": "share of each block matrix's weights a stage may change, in (0, 1]"})
    grad_dropout: float = field(default=0.0, metadata={"help": "share of the mask scores' gradient dropped at random every step, in [0, 1)"})
    samples: int = field(default=128, metadata={"help": "most documents used to initialise the scores"})
    batch_size: int = field(default=4, metadata={"help": "documents per gradient when initialising the scores"})

    def __post_init__(self) -> None:
        check_number(self.density, "density", low=0, low_open=True, high=1)
        check_number(self.grad_dropout, "grad_dropout", low=0, high=1)
        if self.grad_dropout >= 1:
            raise ConfigError("grad_dropout", f"grad_dropout must be below 1 (at 1 the mask never learns), got {self.grad_dropout!r}")
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


class _TopK(torch.autograd.Function):
    """The hard top-k mask of the scores (allowed positions only), with the identity
    (straight-through) gradient."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
        flat = scores.detach().masked_fill(~allowed, float("-inf")).flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, k).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


class MaskedUpdate(torch.nn.Module):
    """A parametrisation W -> W + D * top-k(S)."""

    def __init__(self, scores: torch.Tensor, allowed: torch.Tensor, k: int, grad_dropout: float, generator: torch.Generator):
        super().__init__()
        self.delta = torch.nn.Parameter(torch.zeros_like(scores))
        self.scores = torch.nn.Parameter(scores.clone())
        self.register_buffer("allowed", allowed)
        self.k, self.grad_dropout, self.generator = k, grad_dropout, generator
        if grad_dropout > 0:
            self.scores.register_hook(self._drop)

    def _drop(self, grad: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(grad.shape, generator=self.generator) >= self.grad_dropout
        return grad * keep.to(grad.device, grad.dtype)

    def mask(self) -> torch.Tensor:
        return _TopK.apply(self.scores, self.allowed, self.k)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta * self.mask().to(weight.dtype)


class Supermask(ScopePart):
    name = "supermask"
    incompatible = frozenset({"lora", "olora", "loramoe", "kadapter", "expansion", "ssu", "loki", "alps", "das", "dual_importance"})

    def __init__(self, config: SupermaskConfig):
        self.config = config
        self.used: dict[str, torch.Tensor] = {}  # canonical name -> bool: positions an earlier stage changed
        self.frozen: list[torch.nn.Parameter] = []
        self.modules: dict[str, torch.nn.Module] = {}
        self.initial: dict[str, torch.Tensor] = {}  # this stage's mask at the start (for the row note)
        self.changed: list[dict[str, float]] = []  # per stage: how much of the mask the training moved

    def check(self, train) -> str | None:
        if train.weight_decay > 0:
            return f"weight_decay {train.weight_decay} would move masked-out update entries; use 0"
        return None

    def prepare(self, model, ctx: StageContext):
        layout = block_matrices(model)
        owners = {canonical_name(f"{m}.weight"): module for m, module in model.named_modules()}
        facts = ctx.change.taught() if ctx.change is not None else []
        rng = random.Random(f"ckl.supermask/{ctx.seed}/{ctx.stage}")
        docs = render_documents(list(facts), ctx.relations, rng, qa_subjects=ctx.qa_subjects) if facts else []
        docs = rng.sample(docs, min(self.config.samples, len(docs)))
        usefulness = gradient_statistic(model, ctx.tokenizer, docs, self.config.batch_size, lambda w, g: g.abs(), ctx.accelerator) if docs else {}
        self.frozen = []
        self.freeze(model.parameters())
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        self.modules, self.initial = {}, {}
        for name in layout:
            module = owners[name]
            weight = module.weight
            allowed = ~self.used.get(name, torch.zeros(weight.shape, dtype=torch.bool))
            k = min(max(1, int(round(self.config.density * weight.numel()))), int(allowed.sum()))
            if k == 0:
                continue
            scores = usefulness.get(name, torch.rand(weight.shape, generator=generator)).float().to(weight.device)
            masked = MaskedUpdate(scores, allowed.to(weight.device), k, self.config.grad_dropout, generator).to(weight.device)
            parametrize.register_parametrization(module, "weight", masked)
            module.parametrizations.weight.original.requires_grad_(False)
            self.modules[name] = module
            self.initial[name] = masked.mask().detach().bool().cpu()
        return model

    @torch.no_grad()
    def finish(self, model, ctx: StageContext):
        moved = total = 0
        for name, module in self.modules.items():
            mask = module.parametrizations.weight[0].mask().detach().bool().cpu()
            moved += int((mask & ~self.initial[name]).sum())
            total += int(mask.sum())
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)  # W <- W + D * M
            self.used[name] = self.used.get(name, torch.zeros_like(mask)) | mask
        self.changed.append({"mask_learned": moved / total if total else 0.0})
        self.modules, self.initial = {}, {}
        return super().finish(model, ctx)

    def row_notes(self) -> dict:
        return {"supermask_learned_share": self.changed[-1]["mask_learned"]} if self.changed else {}

    def state_dict(self) -> dict:
        return {**{f"used.{n}": t for n, t in self.used.items()}, "changed": [dict(c) for c in self.changed]}

    def load_state_dict(self, state: dict) -> None:
        self.used = {k[5:]: t.bool() for k, t in state.items() if k.startswith("used.")}
        self.changed = [{k: float(v) for k, v in c.items()} for c in state.get("changed", [])]


register_part("supermask", SupermaskConfig, Supermask, "exclusive supermask subnetworks: each stage learns (straight-through, gradient dropout) which few weights per block matrix change and trains only those; weights an earlier stage changed are never selected again")
