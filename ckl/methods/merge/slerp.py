"""Spherical merging of the old and new task vectors, then interpolation towards the
initial model (WARP: Rame et al. 2024, "WARP: On the Benefits of Weight Averaged Rewarded
Policies", its SLERP merge and its LITI step, "linear interpolation towards
initialisation").

theta_init is the model before the first stage (kept in the method's state). At the end
of each stage, for every parameter tensor, with tau_old = theta_start - theta_init (what
the earlier stages learned) and tau_new = theta_end - theta_init (that plus this stage):

    tau   = slerp(tau_old, tau_new, t)
          = sin((1 - t) Omega) / sin Omega * tau_old + sin(t Omega) / sin Omega * tau_new,
            Omega = the angle between the two
    theta = theta_init + eta * tau                                      (LITI)

SLERP keeps the norm that a linear average of two diverging vectors loses (two
orthogonal vectors of one length average to 0.71 of it; tests/methods/merge/test_slerp.py),
and `eta` < 1 pulls the result back towards the initial model, trading what was learned
for what was known. When one of the two vectors is zero (the first stage's tau_old) or
they are parallel, the merge is linear: (1 - t) tau_old + t tau_new.

Deviations: WARP merges M policies fine-tuned from one initialisation with different
seeds (M trainings per round) and uses its EMA as the RL anchor (`ema` here); ckl trains
once per stage, so the two vectors merged are the model before and after the stage, both
relative to the initial model. The merge is per tensor, as in the paper. Like the other
post-steps, list it before scope parts ("slerp+lora") so that it sees the plain model;
the initial weights double the method state that a checkpoint stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.merge.task_arithmetic import StageStart


@dataclass
class SlerpConfig:
    t: float = field(default=0.5, metadata={"help": "weight of the new task vector in the spherical merge, in [0, 1] (1 = the trained model)"})
    eta: float = field(default=1.0, metadata={"help": "LITI: theta = theta_init + eta * merged task vector, in [0, 1] (1 = no pull towards the initial model)"})

    def __post_init__(self) -> None:
        for name in ("t", "eta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(name, f"{name} must be a number in [0, 1], got {value!r}")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation from a (t = 0) to b (t = 1), on the flattened tensors (in
    float64), back in a's shape and dtype; linear when either is zero or they are parallel."""
    x, y = a.double().flatten(), b.double().flatten()
    nx, ny = x.norm(), y.norm()
    if nx < eps or ny < eps:
        return ((1 - t) * x + t * y).reshape(a.shape).to(a.dtype)
    cos = float((x @ y) / (nx * ny))
    omega = math.acos(max(-1.0, min(1.0, cos)))
    if math.sin(omega) < eps:
        return ((1 - t) * x + t * y).reshape(a.shape).to(a.dtype)
    out = (math.sin((1 - t) * omega) * x + math.sin(t * omega) * y) / math.sin(omega)
    return out.reshape(a.shape).to(a.dtype)


class Slerp(Part):
    name = "slerp"

    def __init__(self, config: SlerpConfig):
        self.config = config
        self.init: dict[str, torch.Tensor] = {}  # parameter name -> the weights before the first stage
        self.start: StageStart | None = None

    def prepare(self, model, ctx: StageContext):
        if not self.init:
            with torch.no_grad():
                self.init = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}
        self.start = StageStart(model)
        return model

    def finish(self, model, ctx: StageContext):
        if self.start is None:
            return model
        c = self.config
        with torch.no_grad():
            for name, p in model.named_parameters():
                start, init = self.start.get(p), self.init.get(name)
                if start is None or init is None or init.shape != p.shape:
                    continue  # created during the run (expansion blocks): kept as trained
                init = init.to(p.device, p.dtype)
                merged = slerp(start - init, p - init, c.t)
                p.copy_(init + c.eta * merged)
        self.start = None
        return model

    def state_dict(self) -> dict:
        return dict(self.init)

    def load_state_dict(self, state: dict) -> None:
        self.init = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


register_part("slerp", SlerpConfig, Slerp, "WARP-style merge: spherical interpolation of the old and new task vectors, then interpolation towards the initial model")
