"""Element-wise importance regularization with layer-wise coefficients (Song et al. 2025,
"How to Alleviate Catastrophic Forgetting in LLMs Finetuning? Hierarchical Layer-Wise and
Element-Wise Regularization").

The added loss, with Omega the element-wise importance and theta* the anchor weights:

    R_l = sum_{i in layer l} Omega_i (theta_i - theta*_i)^2
    loss += (strength / 2) * sum_l lambda_l R_l

Layers are the transformer blocks, with everything before them (embeddings) and after
them (final norm, head) as two more groups (`ckl.model.layers.parameter_depths`). The
layer-wise coefficients balance the layers dynamically, every step, from the layers'
shares of the penalty: lambda_l = n * R_l / sum_l' R_l' (detached; n = number of layers
with a term), so the layers drifting most from what they knew, relative to their
importance, are pulled hardest, and a layer with a small share weighs little; with
`layerwise: false` every lambda_l = 1 (a plain importance-weighted L2).

Element-wise importance Omega_i = mean over batches of |theta_i * dL/dtheta_i| (the
first-order estimate of how much the loss changes if weight i is removed), on documents of
the knowledge to keep: the base knowledge before stage 1 (anchored at the base weights),
then after each stage the facts it taught (anchored at the new weights, Omega <- gamma *
Omega + Omega_new: one running term, like online EWC).

Deviations: the paper records importance along the training path of a general-domain
fine-tuning (a Synaptic-Intelligence-style path integral) and then regularizes one
domain fine-tuning; ckl has no such recording run before stage 1, so it estimates
|theta * grad| on the knowledge itself, before the first stage and after each one. The
paper's exact normalisation of its layer-wise coefficients is not reproduced; the share
rule above is ckl's. Under data parallelism the batches are dealt to the processes and
the sums added (as EWC does), so every process holds the same estimate. With LoRA the
penalty acts on the effective weights (see `ckl.methods.penalty.l2`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_flag, check_number, check_unit
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.penalty._estimate import gradient_statistic
from ckl.methods.penalty.l2 import AnchorCache, canonical_name, snapshot, trainable_weights
from ckl.model.layers import parameter_depths
from ckl.data.stream import Change, render_documents
from ckl.train.loop import rng_for


@dataclass
class ImportanceConfig:
    strength: float = field(default=1e3, metadata={"help": "lambda: loss += lambda/2 * sum_l lambda_l * sum_i Omega_i (theta_i - anchor_i)^2"})
    layerwise: bool = field(default=True, metadata={"help": "layer-wise coefficients from each layer's share of the penalty (false: all 1)"})
    gamma: float = field(default=1.0, metadata={"help": "decay of the earlier importance when a stage's is added, in [0, 1]"})
    samples: int = field(default=256, metadata={"help": "most documents used to estimate each importance"})
    batch_size: int = field(default=4, metadata={"help": "documents per gradient when estimating"})

    def __post_init__(self) -> None:
        check_number(self.strength, "strength", low=0)
        check_flag(self.layerwise, "layerwise")
        check_unit(self.gamma, "gamma")
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


def estimate_importance(model, tokenizer, documents: list[str], batch_size: int, accelerator=None) -> dict[str, torch.Tensor]:
    """Element-wise importance: mean over batches of |theta * grad of the batch's mean
    next-token loss|, for every weight of the underlying model (adapters excluded).

    Returns CPU float32 tensors >= 0 by canonical parameter name (see
    `ckl.methods.penalty._estimate.gradient_statistic`, which also covers data parallelism)."""
    return gradient_statistic(model, tokenizer, documents, batch_size, lambda w, g: (w * g).abs(), accelerator)


def layer_groups(model) -> dict[str, int]:
    """Each weight's layer (block index; -1 before the blocks, L after), by canonical name."""
    depths, _ = parameter_depths(model)
    return {canonical_name(n): d for n, d in depths.items() if ".lora_" not in n}


def layer_coefficients(terms: torch.Tensor) -> torch.Tensor:
    """lambda_l = n * R_l / sum R (detached): each layer weighted by its share of the
    penalty, the coefficients averaging 1; all 1 while the penalty is zero."""
    shares = terms.detach()
    total = shares.sum()
    if total <= 0:
        return torch.ones_like(shares)
    return len(shares) * shares / total


class Importance(Part):
    name = "importance"

    def __init__(self, config: ImportanceConfig):
        self.config = config
        self.importance: AnchorCache | None = None
        self.anchor: AnchorCache | None = None
        self.groups: dict[str, int] = {}

    def prepare(self, model, ctx: StageContext):
        self.groups = layer_groups(model)
        if self.importance is None:  # before stage 1: the base knowledge is what must stay
            self.importance = AnchorCache(self._estimate(model, list(ctx.base), ctx, "base"))
            self.anchor = AnchorCache(snapshot(model))
        return model

    def layer_terms(self, model) -> tuple[list[int], torch.Tensor] | None:
        """(layer ids, R_l for each) over the trainable weights that have an anchor."""
        if not self.groups:
            self.groups = layer_groups(model)
        sums: dict[int, torch.Tensor] = {}
        for name, theta in trainable_weights(model).items():
            if self.anchor is None or name not in self.anchor.tensors:
                continue
            term = (self.importance.get(name, theta) * (theta - self.anchor.get(name, theta)).pow(2)).sum()
            layer = self.groups.get(name, -2)
            sums[layer] = sums[layer] + term if layer in sums else term
        if not sums:
            return None
        layers = sorted(sums)
        return layers, torch.stack([sums[l] for l in layers])

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.config.strength == 0:
            return None
        found = self.layer_terms(model)
        if found is None:
            return None
        _, terms = found
        coefficients = layer_coefficients(terms) if self.config.layerwise else torch.ones_like(terms)
        return 0.5 * self.config.strength * (coefficients * terms).sum()

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        taught = change.taught()
        if not taught and not change.corpus:
            return
        new = self._estimate(model, taught, ctx, change.stage, list(change.corpus))
        old = self.importance.tensors if self.importance is not None else {}
        self.importance = AnchorCache({n: self.config.gamma * old[n] + t if n in old else t for n, t in new.items()})
        self.anchor = AnchorCache(snapshot(model))

    def _estimate(self, model, facts, ctx: StageContext, label, extra: list[str] | None = None) -> dict[str, torch.Tensor]:
        rng = rng_for(ctx.seed, "importance", ctx.stage, label)
        documents = render_documents(facts, ctx.relations, rng, qa_subjects=ctx.qa_subjects) + list(extra or [])
        documents = rng.sample(documents, min(self.config.samples, len(documents)))
        return estimate_importance(model, ctx.tokenizer, documents, self.config.batch_size, ctx.accelerator)

    def state_dict(self) -> dict:
        if self.importance is None:
            return {}
        state = {f"omega.{n}": t for n, t in self.importance.tensors.items()}
        state.update({f"anchor.{n}": t for n, t in self.anchor.tensors.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        omega = {k[6:]: t for k, t in state.items() if k.startswith("omega.")}
        anchor = {k[7:]: t for k, t in state.items() if k.startswith("anchor.")}
        self.importance = AnchorCache(omega) if omega else None
        self.anchor = AnchorCache(anchor) if anchor else None


register_part("importance", ImportanceConfig, Importance, "element-wise |theta*grad| importance penalty toward earlier weights, with dynamic layer-wise coefficients")
