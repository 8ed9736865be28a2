"""DAS soft-masking: slow down the units that matter to what the model knows, in
proportion to how much they matter (Ke et al. 2023, "Continual Pre-training of Language
Models", its soft-masking of units by their importance to general knowledge).

Before stage 1 every output unit of every weight matrix inside the transformer blocks is
scored on documents of the knowledge to keep (the base knowledge K0 and the world's
general text): the sum over the unit's weights of |theta * dL/dtheta|
(`ckl.methods.penalty._estimate`). Scores are turned into importances in [0, 1] per matrix
as the paper does, |tanh(standardised score)|, and after each stage what it taught (facts, and a domain corpus)
are scored the same way and merged by an element-wise maximum (what any stage needed
stays protected). During a stage each unit's change is multiplied by 1 - importance: a
unit that matters fully does not move, one that does not matter moves freely, everything
in between moves in proportion.

`on` says where the multiplier acts. `gradient` is the paper's: the gradient is
multiplied before the optimiser step. Under Adam, which ckl trains with, that does almost
nothing: Adam divides each element's step by the running size of its own gradient, so a
constant factor on a unit's gradient leaves its step unchanged (except for factors near 0,
where Adam's epsilon takes over). tests/methods/scope/test_das.py measures it: with
`on: gradient` the most and least important units move in the same proportion as under
plain fine-tuning. `update` (the default) multiplies the optimiser's step itself: right
after each step (the loop's `after_step` hook) the weights are set to
prev + (1 - importance) * (new - prev).

Deviations: the paper's importance is a gradient-based proxy of each unit's effect on the
robustness of the representation (KL between two dropout passes), computed on general
domain text, over attention heads and feed-forward neurons; here it is |theta * grad| of
the next-token loss over output units of every block matrix. Its contrastive
representation term is not included. Embeddings, norms and biases train freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_count
from ckl.data.stream import Change, render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.penalty._estimate import gradient_statistic
from ckl.methods.penalty.l2 import base_parameters
from ckl.methods.scope._masks import MaskedUpdates
from ckl.methods.scope.ssu import block_matrices, unit_scores
from ckl.train.loop import rng_for

PLACES = ("update", "gradient")


@dataclass
class DasConfig:
    on: str = field(default="update", metadata={"help": "where 1 - importance multiplies: update (the optimiser's step; works under Adam) or gradient (the paper's; Adam undoes it)"})
    samples: int = field(default=256, metadata={"help": "most documents scored each time"})
    batch_size: int = field(default=4, metadata={"help": "documents per gradient when scoring"})

    def __post_init__(self) -> None:
        if self.on not in PLACES:
            raise ConfigError("on", f"on must be one of {', '.join(PLACES)}, got {self.on!r}")
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


def importance(scores: torch.Tensor) -> torch.Tensor:
    """|tanh(standardised scores)|: in [0, 1], per matrix (the paper's normalisation)."""
    s = scores.float()
    std = s.std()
    if not torch.isfinite(std) or std == 0:
        return torch.zeros_like(s)
    return torch.tanh((s - s.mean()) / std).abs()


class Das(MaskedUpdates):
    name = "das"

    def __init__(self, config: DasConfig):
        self.config = config
        self.importance: dict[str, torch.Tensor] | None = None  # per matrix, per output unit, in [0, 1]
        self.layout: dict[str, bool] = {}
        self.masks: dict[str, torch.Tensor] = {}  # per matrix, the multiplier 1 - importance in the weight's shape
        self.prev: dict[str, torch.Tensor] | None = None
        self.frozen = []

    def check(self, train) -> str | None:
        return None  # soft masks scale steps; weight decay does not undo them

    def prepare(self, model, ctx: StageContext):
        self.layout = block_matrices(model)
        if self.importance is None:  # before stage 1: K0 and the general text are what must stay
            self.importance = self._importance(model, list(ctx.base), ctx, "base", extra=list(ctx.general_text))
        params = base_parameters(model)
        self.masks = {}
        for name, imp in self.importance.items():
            keep = 1.0 - imp
            shape = params[name].shape
            self.masks[name] = keep[None, :].expand(shape).clone() if self.layout[name] else keep[:, None].expand(shape).clone()
        self.prev = None
        return model

    def filter_gradients(self, model, step: int) -> None:
        if self.config.on == "gradient":
            super().filter_gradients(model, step)
            return
        params = base_parameters(model)  # the weights before this step, to scale its update
        self.prev = {name: params[name].detach().clone() for name in self.masks}

    def after_step(self, model, step: int) -> None:
        """`update`: weights <- prev + (1 - importance) * (weights - prev)."""
        if self.config.on != "update" or self.prev is None:
            return
        params = base_parameters(model)
        with torch.no_grad():
            for name, mask in self.masks.items():
                p = params[name]
                prev = self.prev[name].to(p.device, p.dtype)
                p.copy_(prev + mask.to(p.device, p.dtype) * (p - prev))
        self.prev = None

    def finish(self, model, ctx: StageContext):
        self.prev = None
        return super().finish(model, ctx)

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        taught = change.taught()
        if not taught and not change.corpus:
            return
        new = self._importance(model, taught, ctx, change.stage, extra=change.corpus)  # a domain corpus is what the stage taught too
        self.importance = {n: torch.maximum(self.importance[n], t) if n in self.importance else t for n, t in new.items()}

    def _importance(self, model, facts, ctx: StageContext, label, extra=()) -> dict[str, torch.Tensor]:
        rng = rng_for(ctx.seed, "das", ctx.stage, label)
        documents = render_documents(facts, ctx.relations, rng, qa_subjects=ctx.qa_subjects) + [t for t in extra if t.strip()]
        documents = rng.sample(documents, min(self.config.samples, len(documents)))
        element = gradient_statistic(model, ctx.tokenizer, documents, self.config.batch_size, lambda w, g: (w * g).abs(), ctx.accelerator)
        return {n: importance(s) for n, s in unit_scores(element, self.layout or block_matrices(model)).items()}

    def state_dict(self) -> dict:
        return {} if self.importance is None else {f"importance.{n}": t for n, t in self.importance.items()}

    def load_state_dict(self, state: dict) -> None:
        imp = {k[len("importance."):]: t for k, t in state.items() if k.startswith("importance.")}
        self.importance = imp or None


register_part("das", DasConfig, Das, "DAS soft-masking: each block matrix unit's update scaled by 1 - its importance to the knowledge to keep")
