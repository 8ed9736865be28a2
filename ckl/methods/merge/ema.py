"""Exponential moving average of the weights during the stage, loaded at its end (the EMA
anchor of WARP, Ramé et al. 2024, "WARP: On the Benefits of Weight Averaged Rewarded
Policies"; Polyak averaging in general).

ema <- decay * ema + (1 - decay) * theta after every optimiser step, starting from the
stage-start weights; `finish` loads the EMA into the model. The loop has no hook after the
optimiser step, so the update runs in the `loss()` hook: the loss of step t sees the
weights after step t - 1, which makes the EMA lag one step; `finish` adds the last step's
weights. Deviation: WARP uses the EMA as a KL anchor for RL and then merges policies; here
the EMA itself is the stage's result, and it restarts from each stage's start.

Only parameters that train are averaged, found at the first step, so the part composes
with scope parts in either place; list it after them ("lora+ema", "expansion+ema") so that
`finish` averages the adapters / new blocks before they are merged. Each rank keeps its
own copy under DDP (the weights are identical across ranks); under FSDP the shards are
averaged separately, which is also correct.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import Part, StageContext, register_part


@dataclass
class EmaConfig:
    decay: float = field(default=0.99, metadata={"help": "ema <- decay * ema + (1 - decay) * theta after each step, in [0, 1)"})

    def __post_init__(self) -> None:
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not 0 <= self.decay < 1:
            raise ConfigError("decay", f"decay must be a number in [0, 1), got {self.decay!r}")


class Ema(Part):
    name = "ema"

    def __init__(self, config: EmaConfig):
        self.config = config
        self.average: dict[torch.nn.Parameter, torch.Tensor] | None = None
        self.updates = 0

    def prepare(self, model, ctx: StageContext):
        self.average, self.updates = None, 0
        return model

    def _update(self, model) -> None:
        with torch.no_grad():
            if self.average is None:
                # first step: nothing has moved yet, so these are the stage-start weights (in fp32)
                self.average = {p: p.detach().float().clone() for p in model.parameters() if p.requires_grad}
                return
            for p, ema in self.average.items():
                ema.lerp_(p.detach().float(), 1 - self.config.decay)
            self.updates += 1

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        self._update(model)  # the weights after step - 1
        return None

    def finish(self, model, ctx: StageContext):
        if self.average is not None:
            self._update(model)  # the last step's weights
            with torch.no_grad():
                for p, ema in self.average.items():
                    p.copy_(ema.to(p.dtype))
        self.average = None
        return model


register_part("ema", EmaConfig, Ema, "keep an exponential moving average of the weights and load it after the stage")
