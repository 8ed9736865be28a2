"""LiNeS: scale each layer's update by its depth (Wang et al. 2024, "LiNeS: Post-training
Layer Scaling Prevents Forgetting and Enhances Model Merging").

A post-step: `finish` sets theta = theta_start + lambda * (theta_end - theta_start) with
lambda_l = alpha + beta * l / (L - 1) for block l of L (0-based), so shallow layers, which
hold general features, keep close to the start and deep layers keep their update.
Parameters before the blocks (token / position embeddings) get alpha, those after them
(final layer norm, output head) get alpha + beta, the deepest block's scale; a tied output
head is the input embedding and gets alpha. A model with one block gives it alpha + beta.
Deviation: the paper scales the task vector of one fine-tuning from the pretrained model;
here each stage's update is scaled relative to the stage's start. Composition as for
task arithmetic: list it before scope parts ("lines+lora"); with block expansion the
depths are those of the expanded model and the new blocks keep their update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ckl.core.checks import ConfigError
from ckl.methods.base import StageContext, register_part
from ckl.model.layers import parameter_depths
from ckl.methods.merge.task_arithmetic import RescaleUpdate


@dataclass
class LinesConfig:
    alpha: float = field(default=0.5, metadata={"help": "update scale of the first block (and the embeddings)"})
    beta: float = field(default=0.5, metadata={"help": "added to the scale linearly with depth: the last block gets alpha + beta"})

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(name, f"{name} must be a finite number, got {value!r}")


class Lines(RescaleUpdate):
    name = "lines"

    def prepare(self, model, ctx: StageContext):
        parameter_depths(model)  # fail before training on a model whose blocks cannot be found
        return super().prepare(model, ctx)

    def scale(self, depth: int, layers: int) -> float:
        """lambda for a parameter at `depth` (-1 before the blocks, `layers` after them)."""
        if depth < 0:
            return self.config.alpha
        if depth >= layers - 1:
            return self.config.alpha + self.config.beta
        return self.config.alpha + self.config.beta * depth / (layers - 1)

    def scale_of(self, model):
        depths, layers = parameter_depths(model)
        return lambda name: self.scale(depths[name], layers)


register_part("lines", LinesConfig, Lines, "LiNeS: scale each block's update linearly with depth (shallow layers stay close)")
