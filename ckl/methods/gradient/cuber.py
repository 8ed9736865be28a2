"""CUBER-style backward knowledge transfer: per layer, block the part of the step that would
hurt the old knowledge and strengthen the part that helps it (after Lin et al. 2022,
"Beyond Not-Forgetting: Continual Learning with Backward Knowledge Transfer").

A-GEM (`agem`) only ever blocks: one global projection when the whole step conflicts with
the memory's gradient. CUBER's point is that a layer whose new-task gradient agrees
strongly with an old task's may be *updated for the old task's benefit*, while a layer
whose gradient conflicts keeps the old task's space untouched. Here, each step, for every
trainable parameter tensor l with step gradient g_l and memory gradient r_l (the gradient
of the next-token loss on a batch of earlier facts, as A-GEM draws it):

- conflict (g_l . r_l < 0): g_l loses its component along r_l, so the layer's step leaves
  the memory loss unchanged to first order (not forgetting);
- strong agreement (cos(g_l, r_l) >= `trust`): the component along r_l is scaled by
  1 + `transfer`, a larger step in the direction that lowers the memory loss too
  (backward transfer);
- otherwise g_l is left as it is.

Deviations: CUBER works on GPM's layer-wise input subspaces of old tasks without replay,
and measures the correlation of the new and old tasks' gradients in those subspaces; ckl
has no task bases, so the memory gradient (A-GEM's memory of earlier facts, kept true
under updates and deletions) stands for the old task's gradient and each parameter
tensor is a layer. `transfer` and `trust` are this adaptation's knobs (the paper's
trust-region condition decides when the old subspace may move).
Cost: as A-GEM, one extra forward and backward per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import register_part
from ckl.methods.gradient.agem import Agem, AgemConfig


@dataclass
class CuberConfig(AgemConfig):
    trust: float = field(default=0.1, metadata={"help": "cosine between a layer's step and memory gradients above which the step is strengthened along the memory gradient"})
    transfer: float = field(default=0.5, metadata={"help": "extra share of the agreeing component added to a trusted layer's step (0: only block conflicts, layer-wise A-GEM)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.trust, "trust", low=0, high=1)
        check_number(self.transfer, "transfer", low=0)


def layerwise_transfer(g: torch.Tensor, r: torch.Tensor, trust: float, transfer: float) -> tuple[torch.Tensor, str]:
    """One layer's gradient after CUBER's rule, and which case applied: "blocked",
    "transferred" or "kept"."""
    g32, r32 = g.float(), r.float()
    dot, rr = torch.dot(g32.reshape(-1), r32.reshape(-1)), torch.dot(r32.reshape(-1), r32.reshape(-1))
    if rr <= 0:
        return g, "kept"
    along = (dot / rr) * r32  # g's component along r
    if dot < 0:
        return (g32 - along).to(g.dtype), "blocked"
    cosine = dot / (g32.norm() * rr.sqrt()).clamp_min(1e-30)
    if cosine >= trust and transfer > 0:
        return (g32 + transfer * along).to(g.dtype), "transferred"
    return g, "kept"


class Cuber(Agem):
    name = "cuber"

    def __init__(self, config: CuberConfig):
        super().__init__(config)
        self.cases = {"blocked": 0, "transferred": 0, "kept": 0}  # layer-steps of the current stage, by case

    def prepare(self, model, ctx):
        self.cases = dict.fromkeys(self.cases, 0)
        return super().prepare(model, ctx)

    def filter_gradients(self, model, step: int) -> None:
        found = self.reference_gradient(model, step)
        if found is None:
            return
        params, reference = found
        offset = 0
        for p in params:
            n = p.numel()
            r = reference[offset : offset + n].view_as(p)
            offset += n
            if p.grad is None:
                continue
            new, case = layerwise_transfer(p.grad, r, self.config.trust, self.config.transfer)
            self.cases[case] += 1
            if case != "kept":
                p.grad.copy_(new)
                self.projected += case == "blocked"


register_part("cuber", CuberConfig, Cuber, "CUBER-style backward transfer: per layer, block steps that conflict with a memory of earlier facts and strengthen those that agree with it")
