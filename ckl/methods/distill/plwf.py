"""PLwF: progressive learning without forgetting (Feng et al. 2022, "Progressive Learning
without Forgetting"), in its language-model form.

LwF (`lwf`) distils only the model the stage starts from, so what the stages before it
forgot is forgotten for good: the knowledge space it keeps fades stage by stage. PLwF keeps
the functions of *every* earlier model (here: the model as it started each stage so far,
the base model first) and distils all of them on the current data:

    weight * T^2 * mean over teachers k of
        mean over non-padding positions of KL(softmax(teacher_k / T) || softmax(student / T))

and adds *credit assignment*: the gradient of the new data's loss and the gradient of the
distillation pull against each other on the positions that state a changed fact, and
where they conflict (negative dot product) each is projected onto the normal plane of the
other before they are summed (the gradient-surgery projection), so neither undoes the
other's step to first order.

Deviations: the paper's teachers are the models at the end of each task with their
task-specific heads, on images; an LM has one head, so every teacher is distilled through
the same next-token distributions. The "rest" gradient that credit assignment balances
against the distillation is the whole step's gradient minus the distillation's (the
next-token loss and whatever other parts add). `max_teachers` (0: all, the paper) keeps
only the most recent teachers when memory is short. Credit assignment is refused under
data parallelism and fp16 loss scaling (the part's own gradient would not be on the same
scale as the reduced, scaled step).

Cost: one frozen model per earlier stage in memory and one teacher forward each per step;
with credit assignment, one more backward (of the distillation term) per step. The
teachers' weights are checkpointed with the run (safetensors), so a resumed run distils
the same knowledge space.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_count, check_flag, check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.distill._frozen import FrozenCopy
from ckl.methods.distill.lwf import distillation_kl
from ckl.methods.gradient.agem import flat_grad, set_flat_grad, trainable


@dataclass
class PlwfConfig:
    weight: float = field(default=1.0, metadata={"help": "weight of the distillation term (mean over the teachers) added to the next-token loss"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature T of teachers and student (the term is scaled by T^2)"})
    max_teachers: int = field(default=0, metadata={"help": "most earlier models distilled, the most recent kept (0: every one, the paper)"})
    credit_assignment: bool = field(default=True, metadata={"help": "project the distillation gradient and the rest of the step's gradient off each other where they conflict"})

    def __post_init__(self) -> None:
        check_number(self.weight, "weight", low=0)
        check_number(self.temperature, "temperature", low=0, low_open=True)
        check_count(self.max_teachers, "max_teachers", low=0)
        check_flag(self.credit_assignment, "credit_assignment")


def deconflict(rest: torch.Tensor, distill: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The sum of two flat gradients after credit assignment: when they conflict
    (rest . distill < 0) each loses its component along the other (both projections use
    the original vectors), so the result has a non-negative dot product with both.
    Returns (the summed gradient, whether a projection happened)."""
    dot = torch.dot(rest, distill)
    if dot >= 0:
        return rest + distill, False
    rest_norm, distill_norm = torch.dot(rest, rest), torch.dot(distill, distill)
    projected_rest = rest - (dot / distill_norm) * distill if distill_norm > 0 else rest
    projected_distill = distill - (dot / rest_norm) * rest if rest_norm > 0 else distill
    return projected_rest + projected_distill, True


class Plwf(Part):
    name = "plwf"
    reads_batch = True  # distillation on the teaching batch (ckl.train.loop.LossTerm)

    def __init__(self, config: PlwfConfig):
        self.config = config
        self.snapshots: list[dict[str, torch.Tensor]] = []  # weights of the model as it started each earlier stage (CPU)
        self.teachers: list[FrozenCopy] = []  # during a stage: the frozen models distilled
        self.distill_grad: torch.Tensor | None = None  # this step's distillation gradient, flat (credit assignment)
        self.projected = 0  # steps of the current stage whose gradients conflicted and were projected

    def prepare(self, model, ctx: StageContext):
        if self.config.credit_assignment:
            accelerator = ctx.accelerator
            if accelerator is not None and accelerator.num_processes > 1:
                raise ConfigError("credit_assignment", "plwf: credit_assignment works on one process only (set credit_assignment: false under data parallelism)")
            if accelerator is not None and getattr(accelerator, "scaler", None) is not None:
                raise ConfigError("credit_assignment", "plwf: credit_assignment cannot run under fp16 loss scaling (use bf16 or credit_assignment: false)")
        current = FrozenCopy(model)
        self.teachers = []
        for weights in self.snapshots:  # earlier stages' starts: the same structure, other weights
            teacher = copy.deepcopy(current)
            try:
                teacher.model.load_state_dict(weights, strict=True)
            except RuntimeError as err:
                raise ConfigError("plwf", f"plwf: an earlier stage's model no longer fits this stage's model (a part changed its structure between stages): {err}") from None
            self.teachers.append(teacher)
        self.teachers.append(current)
        if self.config.max_teachers:
            self.teachers = self.teachers[-self.config.max_teachers:]
        self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in current.model.state_dict().items()})
        if self.config.max_teachers:
            self.snapshots = self.snapshots[-self.config.max_teachers:]
        self.projected = 0
        self.distill_grad = None
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        self.distill_grad = None
        if not self.teachers or self.config.weight == 0 or batch is None:  # None: a step without teaching text
            return None
        T = float(self.config.temperature)
        mask = batch["attention_mask"]
        kl = sum(distillation_kl(outputs.logits, teacher.logits(batch), mask, T) for teacher in self.teachers) / len(self.teachers)
        term = self.config.weight * T * T * kl
        if self.config.credit_assignment and term.requires_grad:
            params = trainable(model)
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            self.distill_grad = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])
        return term

    def filter_gradients(self, model, step: int) -> None:
        if self.distill_grad is None:
            return
        params = trainable(model)
        total = flat_grad(params)
        combined, projected = deconflict(total - self.distill_grad, self.distill_grad)
        self.distill_grad = None
        if projected:
            set_flat_grad(params, combined)
            self.projected += 1

    def finish(self, model, ctx: StageContext):
        self.teachers = []
        self.distill_grad = None
        return model

    def state_dict(self) -> dict:
        state: dict = {"snapshots": len(self.snapshots)}
        for k, weights in enumerate(self.snapshots):
            state.update({f"snapshot.{k}.{name}": t for name, t in weights.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.snapshots = []
        for k in range(int(state.get("snapshots", 0))):
            prefix = f"snapshot.{k}."
            self.snapshots.append({key[len(prefix):]: t for key, t in state.items() if key.startswith(prefix)})


register_part("plwf", PlwfConfig, Plwf, "PLwF: distil every earlier stage's model on the current data, with credit assignment between the new loss and the distillation (Feng et al. 2022)")
