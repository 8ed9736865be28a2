"""Weight interpolation between the stage's start and end (Wortsman et al. 2022, WiSE-FT:
"Robust fine-tuning of zero-shot models").

A post-step: `prepare` remembers the stage-start weights, `finish` sets
theta = (1 - alpha) * theta_start + alpha * theta_end. alpha = 0 keeps the start model,
1 the trained one. Deviation: WiSE-FT interpolates the fine-tuned model with the zero-shot
(pretrained) one once; here every stage interpolates with that stage's start (the previous
stage's result). The same arithmetic as task arithmetic with scale = alpha, restricted to
[0, 1]; the shared helper lives in `ckl.methods.merge.task_arithmetic` (see there for how to
compose it with scope parts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckl.core.checks import ConfigError
from ckl.methods.base import register_part
from ckl.methods.merge.task_arithmetic import RescaleUpdate


@dataclass
class InterpolateConfig:
    alpha: float = field(default=0.5, metadata={"help": "weight of the trained model: theta = (1-alpha) theta_start + alpha theta_end, in [0, 1]"})

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ConfigError("alpha", f"alpha must be a number in [0, 1], got {self.alpha!r}")


class Interpolate(RescaleUpdate):
    name = "interpolate"

    def scale_of(self, model):
        return lambda name: float(self.config.alpha)


register_part("interpolate", InterpolateConfig, Interpolate, "WiSE-FT: interpolate between the stage-start and trained weights")
