"""SSU, source-shielded updates: the output units of each weight matrix that matter most
to the knowledge to keep are shielded (their gradients are zeroed), the rest train.

As issue 15 describes the method of the seed paper ("importance-scored column freezing of
weight matrices"): before stage 1 every output unit of every weight matrix inside the
transformer blocks is scored on documents of the base knowledge K0, and the top
`fraction` of each matrix's units are shielded for the stage; after each stage the facts
it taught add their scores (a running sum, decayed by `gamma`), so later stages shield
what earlier ones taught too. A unit's score is the sum over its weights of |theta *
dL/dtheta| (the first-order estimate of the loss change if the weight were removed; the
same statistic as the `importance` penalty, `ckl.methods.penalty._estimate`).

A "unit" is an output feature: a column of GPT-2's Conv1D weight (in, out), a row of an
nn.Linear weight (out, in) (`ckl.model.layers.is_transposed`). Embeddings, norms and
biases train freely. Shielding is a gradient filter (`filter_gradients`, after backward
and before clipping and the optimiser step): with AdamW and no weight decay (ckl's
default) a shielded weight never moves, bit for bit (tests/methods/scope/test_ssu.py).

Deviations: the paper's exact scoring and its shielding granularity were not available to
check; the score above and the per-matrix fraction are ckl's choices. With weight decay >
0 AdamW still decays shielded weights (the decay is not a gradient). Composed with LoRA the
base weights do not train anyway; SSU then changes nothing.
Measured on the tiny test world (tests/methods/scope/test_ssu.py, seed 0, one thread, 10
epochs at lr 3e-3, half the units shielded): K0 statements 0.517 against naive's 0.350,
stage 1 learned 0.214 against 0.393; naive with half the epochs keeps 0.600 and learns
0.250, better on both. The shield works as a mechanism; on that world it buys nothing
that training less does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_number, check_unit
from ckl.data.stream import Change, render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.penalty._estimate import gradient_statistic
from ckl.methods.penalty.l2 import canonical_name
from ckl.methods.scope._masks import MaskedUpdates, unit_mask
from ckl.model.layers import is_transposed, parameter_depths
from ckl.train.loop import rng_for


@dataclass
class SsuConfig:
    fraction: float = field(default=0.5, metadata={"help": "share of each block matrix's output units shielded (their gradients zeroed), in [0, 1]"})
    gamma: float = field(default=1.0, metadata={"help": "decay of earlier scores when a stage's taught facts add theirs, in [0, 1]"})
    samples: int = field(default=256, metadata={"help": "most documents scored each time"})
    batch_size: int = field(default=4, metadata={"help": "documents per gradient when scoring"})

    def __post_init__(self) -> None:
        check_number(self.fraction, "fraction", low=0, high=1)
        check_unit(self.gamma, "gamma")
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


def block_matrices(model) -> dict[str, bool]:
    """Canonical name -> whether the weight is stored (in, out), for every 2-D weight
    inside the transformer blocks."""
    depths, blocks = parameter_depths(model)
    owners = {f"{m}.weight": module for m, module in model.named_modules()}
    out = {}
    for name, p in model.named_parameters():
        if p.dim() == 2 and 0 <= depths.get(name, -1) < blocks and ".lora_" not in name and name in owners:
            out[canonical_name(name)] = is_transposed(owners[name])
    return out


def unit_scores(element: dict[str, torch.Tensor], layout: dict[str, bool]) -> dict[str, torch.Tensor]:
    """Per output unit, the sum of its weights' element scores."""
    return {n: element[n].sum(dim=0 if transposed else 1) for n, transposed in layout.items() if n in element}


def shield_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Per matrix, a bool vector over output units: True for the top `fraction` by score
    (ties broken by index, so the mask is deterministic)."""
    masks = {}
    for name, s in scores.items():
        k = int(round(fraction * s.numel()))
        mask = torch.zeros(s.numel(), dtype=torch.bool)
        if k:
            mask[torch.argsort(s, descending=True, stable=True)[:k]] = True
        masks[name] = mask
    return masks


class SSU(MaskedUpdates):
    name = "ssu"

    def __init__(self, config: SsuConfig):
        self.config = config
        self.scores: dict[str, torch.Tensor] | None = None
        self.shielded: dict[str, torch.Tensor] = {}  # per matrix, the shielded output units (bool)
        self.masks: dict[str, torch.Tensor] = {}
        self.layout: dict[str, bool] = {}
        self.frozen = []

    def prepare(self, model, ctx: StageContext):
        self.layout = block_matrices(model)
        if self.scores is None:  # before stage 1: the base knowledge is what must stay
            self.scores = self._score(model, list(ctx.base), ctx, "base")
        self.shielded = shield_masks(self.scores, self.config.fraction)
        shapes = {canonical_name(n): p.shape for n, p in model.named_parameters()}
        self.masks = {n: ~unit_mask(shapes[n], units, self.layout[n]) for n, units in self.shielded.items()}
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        taught = change.taught()
        if not taught:
            return
        new = self._score(model, taught, ctx, change.stage)
        old = self.scores or {}
        self.scores = {n: self.config.gamma * old[n] + t if n in old else t for n, t in new.items()}

    def _score(self, model, facts, ctx: StageContext, label) -> dict[str, torch.Tensor]:
        rng = rng_for(ctx.seed, "ssu", ctx.stage, label)
        documents = render_documents(facts, ctx.relations, rng, qa_subjects=ctx.qa_subjects)
        documents = rng.sample(documents, min(self.config.samples, len(documents)))
        element = gradient_statistic(model, ctx.tokenizer, documents, self.config.batch_size, lambda w, g: (w * g).abs(), ctx.accelerator)
        return unit_scores(element, self.layout or block_matrices(model))

    def state_dict(self) -> dict:
        return {} if self.scores is None else {f"score.{n}": t for n, t in self.scores.items()}

    def load_state_dict(self, state: dict) -> None:
        scores = {k[6:]: t for k, t in state.items() if k.startswith("score.")}
        self.scores = scores or None


register_part("ssu", SsuConfig, SSU, "source-shielded updates: each block matrix's output units most important to the knowledge to keep get no gradient")
