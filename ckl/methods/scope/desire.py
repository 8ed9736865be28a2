"""DESIRE-style rehearsal-free LoRA consolidation: each stage trains a LoRA freely, then the
new update is merged with the old knowledge by matching features, using only feature
statistics of the old data, never the data (after Guo et al. 2024, "DESIRE: Dynamic
Knowledge Consolidation for Rehearsal-Free Continual Learning").

A scope part with the `lora` part's fields. The stage's LoRA trains with no constraint (the
paper's "maximise the learning of new classes"). At the end, for every adapted linear layer
with consolidated update A (everything merged so far, relative to the base weights), the
stage's update D (the trained LoRA's B A times its scale) and the input second moments
C_old (of the knowledge to keep: the base model's own training text, then every stage's
facts) and C_new (of this stage's documents, under the trained model), the merged update
is the M that best reproduces the old layer's outputs on old inputs and the new layer's on
new inputs:

    M = argmin  tr((M - A) C_old (M - A)^T) * keep + tr((M - (A + D)) C_new (M - (A + D))^T)
      = A + D C_new (keep * C_old + C_new + eps I)^-1

so the new update is kept along the directions the stage's inputs use and damped along
those only the old knowledge uses. C_old then absorbs C_new. How much of the update's effect
survives on each kind of input is every row's note (`desire_effect_on_old`, `_on_new`: the
RMS output change of the merged update over the trained one's). Only second moments are kept
(d_in x d_in per adapted layer: for wide models restrict `target_modules`).

Deviations: the paper merges two LoRA sets with learned coefficients under a feature
attribution loss from Gaussian class statistics, and refines a classifier with pseudo
features; an LM has no classifier head to refine, and the feature-matching merge is solved
in closed form on the layers' input second moments (the RegMean solution, Jin et al. 2023)
instead of trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_number
from ckl.data.stream import render_documents
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.edit._covariance import covariance_texts, input_second_moments
from ckl.methods.penalty.l2 import canonical_name
from ckl.methods.scope.lora import Lora, LoraConfig
from ckl.model.layers import add_update, is_transposed


@dataclass
class DesireConfig:
    r: int = field(default=16, metadata={"help": "rank of each stage's LoRA"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules; 'all-linear' = every linear layer but the output head"})
    keep: float = field(default=1.0, metadata={"help": "weight of matching the old knowledge's outputs against the stage's (higher keeps more)"})
    eps: float = field(default=1e-3, metadata={"help": "ridge added to the summed second moments, relative to their mean diagonal"})
    samples: int = field(default=256, metadata={"help": "most documents used for each second moment"})

    def __post_init__(self) -> None:
        LoraConfig(r=self.r, alpha=self.alpha, target_modules=self.target_modules)  # same checks, same messages
        check_number(self.keep, "keep", low=0)
        check_number(self.eps, "eps", low=0, low_open=True)
        check_count(self.samples, "samples")


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """Every layer PEFT wrapped with an active LoRA, by canonical name."""
    from peft.tuners.lora import LoraLayer

    return {canonical_name(n): m for n, m in model.named_modules() if isinstance(m, LoraLayer) and m.active_adapters}


def consolidate(delta: torch.Tensor, old: torch.Tensor, new: torch.Tensor, keep: float, eps: float) -> torch.Tensor:
    """The stage's update D (out, in) as merged: D C_new (keep C_old + C_new + ridge)^-1."""
    total = keep * old + new
    ridge = eps * float(total.diagonal().mean().clamp_min(1e-12))
    total = total + ridge * torch.eye(total.shape[0], dtype=total.dtype)
    return torch.linalg.solve(total, (delta @ new).T).T  # total is symmetric: (D C_new) total^-1


class Desire(Part):
    name = "desire"

    def __init__(self, config: DesireConfig):
        self.config = config
        self.lora = Lora(LoraConfig(r=config.r, alpha=config.alpha, target_modules=config.target_modules))
        self.old: dict[str, torch.Tensor] = {}  # layer -> second moment of the knowledge to keep
        # per stage: the merged update's effect relative to the trained one's, as the RMS of its
        # output change on the old knowledge's inputs and on the stage's (sqrt tr(M C M^T) / tr(D C D^T))
        self.kept: list[dict[str, float]] = []

    def _texts(self, facts, ctx: StageContext, label: str) -> list[str]:
        rng = random.Random(f"ckl.desire/{ctx.seed}/{ctx.stage}/{label}")
        docs = render_documents(list(facts), ctx.relations, rng, qa_subjects=ctx.qa_subjects)
        return rng.sample(docs, min(self.config.samples, len(docs)))

    def prepare(self, model, ctx: StageContext):
        peft_model = self.lora.prepare(model, ctx)
        layers = {n: m.get_base_layer() for n, m in lora_layers(peft_model).items()}
        if not self.old:  # before the first stage: the base model's own training text is what to keep
            texts = covariance_texts(ctx.base, ctx.relations, ctx.general_text, self.config.samples, ctx.seed, ctx.qa_subjects)
            peft_model.eval()
            with peft_model.disable_adapter():
                self.old, _ = input_second_moments(peft_model, ctx.tokenizer, layers, texts)
            peft_model.train()
        return peft_model

    @torch.no_grad()
    def finish(self, model, ctx: StageContext):
        layers = lora_layers(model)
        taught = ctx.change.taught() if ctx.change is not None else []
        texts = self._texts(taught, ctx, "new") if taught else []
        if not texts:
            return self.lora.finish(model, ctx)
        model.eval()
        new, _ = input_second_moments(model, ctx.tokenizer, {n: m.get_base_layer() for n, m in layers.items()}, texts)
        deltas = {n: m.get_delta_weight(m.active_adapters[0]).float().cpu() for n, m in layers.items()}  # (out, in) as the layer computes it
        merged_model = self.lora.finish(model, ctx)
        modules = {canonical_name(n): m for n, m in merged_model.named_modules()}
        energy = {"old_D": 0.0, "old_M": 0.0, "new_D": 0.0, "new_M": 0.0}  # tr(X C X^T), summed over layers
        for name, delta in deltas.items():
            d = delta.T if is_transposed(modules[name]) else delta  # GPT-2's Conv1D: PEFT's delta is stored (in, out)
            merged = consolidate(d, self.old[name], new[name], self.config.keep, self.config.eps)
            add_update(modules[name], merged - d)  # the merged LoRA put d in; leave `merged` instead
            for which, c in (("old", self.old[name]), ("new", new[name])):
                energy[f"{which}_D"] += float(((d @ c) * d).sum())
                energy[f"{which}_M"] += float(((merged @ c) * merged).sum())
            self.old[name] = self.old[name] + new[name]
        ratio = lambda which: (energy[f"{which}_M"] / energy[f"{which}_D"]) ** 0.5 if energy[f"{which}_D"] > 0 else 1.0
        self.kept.append({"on_old": ratio("old"), "on_new": ratio("new")})
        return merged_model

    def row_notes(self) -> dict:
        return {"desire_effect_on_old": self.kept[-1]["on_old"], "desire_effect_on_new": self.kept[-1]["on_new"]} if self.kept else {}

    def state_dict(self) -> dict:
        return {**{f"C.{n}": t for n, t in self.old.items()}, "kept": [dict(d) for d in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        self.old = {k[2:]: t for k, t in state.items() if k.startswith("C.")}
        self.kept = [{k: float(v) for k, v in d.items()} for d in state.get("kept", [])]


register_part("desire", DesireConfig, Desire, "DESIRE-style consolidation: a free LoRA per stage, merged so that old inputs (known only by their second moments) keep their outputs and the stage's inputs get the new ones")
