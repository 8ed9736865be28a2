"""RecAdam: an annealed pull toward the stage-start weights (Chen et al. 2020, "Recall and
Learn: Fine-tuning Deep Pretrained Language Models with Less Forgetting"; a baseline in
Jang et al. 2022, "Towards Continual Knowledge Learning of Language Models").

The objective is the paper's

    loss = lambda(t) * task_loss + (1 - lambda(t)) * (gamma / 2) * ||theta - theta_0||^2,
    lambda(t) = 1 / (1 + exp(-k (t - t0))),

with t the optimiser step within the stage and theta_0 the weights at the start of the
stage (the pretrained weights before stage 1, the previous stage's result after).
The loop adds part losses to the task loss, so this part returns
(lambda(t) - 1) * task_loss + (1 - lambda(t)) * (gamma / 2) * ||theta - theta_0||^2,
which makes the total exactly the objective above (other parts' terms stay unscaled).

Deviation: the paper folds the quadratic term into the optimiser (decoupled, like AdamW's
weight decay); here it is an ordinary loss term, so its gradient goes through Adam's
normalisation and the loop's gradient clipping together with the task gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.penalty.l2 import AnchorCache, snapshot, squared_distance


@dataclass
class RecAdamConfig:
    gamma: float = field(default=1.0, metadata={"help": "strength of the quadratic pull toward the stage-start weights"})
    k: float = field(default=0.1, metadata={"help": "steepness of the annealing sigmoid lambda(t)"})
    t0: int = field(default=50, metadata={"help": "optimiser step of the stage at which task loss and pull weigh the same (lambda = 0.5); scale it to the stage's length"})

    def __post_init__(self) -> None:
        check_number(self.gamma, "gamma", low=0)
        check_number(self.k, "k", low=0, low_open=True)
        if isinstance(self.t0, bool) or not isinstance(self.t0, int) or self.t0 < 0:
            raise ConfigError("t0", f"t0 must be an integer >= 0, got {self.t0!r}")


def task_weight(step: int, k: float, t0: int) -> float:
    """lambda(t) = 1 / (1 + exp(-k (t - t0))): the task loss's share at step t."""
    x = -k * (step - t0)
    if x > 700:  # exp overflows; lambda is 0 to double precision
        return 0.0
    return 1.0 / (1.0 + math.exp(x))


class RecAdam(Part):
    name = "recadam"

    def __init__(self, config: RecAdamConfig):
        self.config = config
        self.anchor: AnchorCache | None = None

    def prepare(self, model, ctx: StageContext):
        self.anchor = AnchorCache(snapshot(model))
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.anchor is None:
            return None
        lam = task_weight(step, self.config.k, self.config.t0)
        total = (lam - 1.0) * outputs.loss if outputs is not None else 0.0  # None: a step without teaching text
        distance = squared_distance(model, self.anchor)
        if distance is not None:
            total = total + (1.0 - lam) * 0.5 * self.config.gamma * distance
        return total

    def finish(self, model, ctx: StageContext):
        self.anchor = None
        return model


register_part("recadam", RecAdamConfig, RecAdam, "RecAdam: annealed shift from a pull toward the stage-start weights to the task loss")
