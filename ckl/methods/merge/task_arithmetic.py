"""Task arithmetic: rescale the stage's update (Ilharco et al. 2023, "Editing Models with
Task Arithmetic").

A post-step: `prepare` remembers the stage-start weights theta_start, `finish` sets
theta = theta_start + scale * (theta_end - theta_start), i.e. it scales the stage's task
vector. scale < 1 shrinks the update toward the start (less forgetting, less learning),
scale > 1 extrapolates, a negative scale negates the task (the paper's "forgetting via
negation"). Deviation: the paper adds task vectors of separately fine-tuned models to one
pretrained model; here each stage's vector is scaled in sequence, relative to the
previous stage's result.

This module also holds the helper every update-rescaling part shares (interpolation,
LiNeS): `StageStart` and `rescale_update`. Composition: list a rescaling part *before*
scope parts ("interpolate+lora", "lines+expansion") so that it sees the plain model at
both ends of the stage. Start weights are matched to parameters by identity, so blocks
added during the stage (expansion) have no start and are kept as trained. Under FSDP,
which replaces parameters with flat shards, the start is not found and nothing is
rescaled (untested; plain and DDP runs keep the parameter objects).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import Part, StageContext, register_part


class StageStart:
    """A CPU copy of every parameter at the start of the stage, keyed by the parameter
    object itself (names change under PEFT wrapping and block insertion; objects do not)."""

    def __init__(self, model: torch.nn.Module):
        with torch.no_grad():
            self.tensors = {p: p.detach().to("cpu", copy=True) for p in model.parameters()}

    def get(self, p: torch.nn.Parameter) -> torch.Tensor | None:
        start = self.tensors.get(p)
        if start is None or start.shape != p.shape:
            return None
        return start.to(p.device, p.dtype)


def rescale_update(model: torch.nn.Module, start: StageStart, scale_of: Callable[[str], float]) -> None:
    """In place: theta = theta_start + scale_of(name) * (theta - theta_start), for every
    parameter that has a start (parameters created during the stage are left as they are)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            theta_start = start.get(p)
            if theta_start is None:
                continue
            scale = scale_of(name)
            if scale == 1.0:
                continue
            p.copy_(theta_start + scale * (p - theta_start))


@dataclass
class TaskArithmeticConfig:
    scale: float = field(default=1.0, metadata={"help": "theta = theta_start + scale * (theta_end - theta_start); 1 = plain training"})

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ConfigError("scale", f"scale must be a finite number, got {self.scale!r}")


class RescaleUpdate(Part):
    """Shared shape of the update-rescaling post-steps: remember the stage-start weights
    in `prepare`, rescale each parameter's update by `scale_of(model)(name)` in `finish`."""

    def __init__(self, config):
        self.config = config
        self.start: StageStart | None = None

    def prepare(self, model, ctx: StageContext):
        self.start = StageStart(model)
        return model

    def scale_of(self, model) -> Callable[[str], float]:
        raise NotImplementedError

    def finish(self, model, ctx: StageContext):
        if self.start is not None:
            rescale_update(model, self.start, self.scale_of(model))
        self.start = None  # free the copy
        return model


class TaskArithmetic(RescaleUpdate):
    name = "task_arithmetic"

    def scale_of(self, model) -> Callable[[str], float]:
        return lambda name: float(self.config.scale)


register_part("task_arithmetic", TaskArithmeticConfig, TaskArithmetic, "scale the stage's task vector: theta_start + scale * (theta_end - theta_start)")
