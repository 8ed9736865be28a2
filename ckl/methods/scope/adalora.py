"""AdaLoRA: LoRA whose rank per module is chosen during training from an importance signal
(Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"; the
rank-selective LoRA that "Adaptive Rank, Reduced Forgetting" studies for continual
learning), via PEFT.

A scope part. Every target layer gets an SVD-shaped adapter P diag(E) Q with `init_r`
triplets; every step the sensitivity |theta * grad| of each adapter entry is smoothed and
its uncertainty tracked (PEFT's `RankAllocator`), and after a warm-up the triplets with
the lowest scores are masked (their singular value set to zero) until the total budget
falls, on a cubic schedule, from `init_r` to `target_r` triplets per module on average.
Modules that matter for the stage keep more rank, others fewer or none; PEFT adds the
paper's orthogonality regulariser on P and Q to the loss. At the end of the stage the
adapter merges into the weights (a masked triplet adds nothing) and the final rank of
every module is the part's state and its row note (`ranks`).

PEFT's schedule is in steps and must know the stage's total before training; ckl's loop
packs the documents itself, so the part learns the step count from the first epoch
(through the loop's per-epoch `steps` hook) and sets the schedule then: `warmup` and
`final` are shares of the stage's steps. It therefore needs two or more epochs. PEFT
wants the allocation called after the optimiser step with that step's gradients; ckl's
loop clears gradients before `after_step`, so the part keeps a copy of the adapters'
(small) gradients from the gradient-filter hook, taken after every other filter, and
hands them to the allocator after the step.

Deviations: the paper fine-tunes once; here each stage trains a fresh adapter with its
own allocation and merges it. The budget's final phase is `final` of the stage's steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from peft import AdaLoraConfig as PeftAdaLoraConfig

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.scope.lora import fan_in_fan_out, wrap
from ckl.train.loop import TrainConfig

ADAPTER = "default"
UNKNOWN = 10**9  # the schedule's step count before the first epoch has been counted


@dataclass
class AdaLoraConfig:
    init_r: int = field(default=12, metadata={"help": "triplets (rank) every module starts with"})
    target_r: int = field(default=4, metadata={"help": "average rank per module the budget falls to"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (scale = alpha / rank)"})
    target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules; 'all-linear' = every linear layer but the output head"})
    warmup: float = field(default=0.1, metadata={"help": "share of the stage's steps trained at full rank before allocation starts"})
    final: float = field(default=0.2, metadata={"help": "share of the stage's steps trained at the final ranks"})
    interval: int = field(default=10, metadata={"help": "steps between two budget allocations (the paper's delta T)"})
    orthogonal: float = field(default=0.5, metadata={"help": "weight of the orthogonality regulariser on P and Q (PEFT's orth_reg_weight)"})

    def __post_init__(self) -> None:
        check_count(self.init_r, "init_r")
        check_count(self.target_r, "target_r")
        if self.target_r > self.init_r:
            raise ConfigError("target_r", f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        check_number(self.alpha, "alpha", low=0, low_open=True)
        check_number(self.warmup, "warmup", low=0, high=1)
        check_number(self.final, "final", low=0, high=1)
        if self.warmup + self.final >= 1:
            raise ConfigError("final", f"warmup + final must leave steps for the allocation, got {self.warmup} + {self.final}")
        check_count(self.interval, "interval")
        check_number(self.orthogonal, "orthogonal", low=0)


def module_of(parameter_name: str) -> str:
    """`base_model.model.transformer.h.0.attn.c_attn.lora_E.default` -> `transformer.h.0.attn.c_attn`."""
    name = re.sub(r"\.lora_[ABE]\.[^.]+$", "", parameter_name)
    return name.removeprefix("base_model.model.")


class AdaLora(Part):
    name = "adalora"
    filter_last = True  # read the gradients every other filter (A-GEM's projection, masks) has shaped

    def __init__(self, config: AdaLoraConfig):
        self.config = config
        self.model = None  # the PEFT model during a stage
        self.grads: dict[str, torch.Tensor] = {}
        self.steps_seen = 0
        self.ranks: list[dict[str, int]] = []  # per stage: module -> final rank

    def check(self, train: TrainConfig) -> str | None:
        if train.epochs < 2:
            return "it counts the stage's steps in its first epoch to set PEFT's rank schedule; it needs train.epochs >= 2"
        return None

    def prepare(self, model, ctx: StageContext):
        peft_config = PeftAdaLoraConfig(
            fan_in_fan_out=fan_in_fan_out(model),
            init_r=self.config.init_r,
            target_r=self.config.target_r,
            lora_alpha=self.config.alpha,
            target_modules=self.config.target_modules,
            tinit=UNKNOWN - 1,  # no allocation until the first epoch has been counted (`steps`)
            tfinal=0,
            total_step=UNKNOWN,
            deltaT=self.config.interval,
            orth_reg_weight=self.config.orthogonal,
            task_type="CAUSAL_LM",
        )
        self.model = wrap(model, peft_config, ctx, "adalora")
        self.steps_seen, self.grads = 0, {}
        return self.model

    def _schedule(self):
        return self.model.peft_config[ADAPTER]

    def steps(self, epoch: int, epochs: int) -> int:
        if epoch == 1 and self.model is not None:  # the first epoch's steps are known now
            total = max(self.steps_seen * epochs, 3)
            schedule = self._schedule()
            schedule.total_step = total
            schedule.tinit = int(self.config.warmup * total)
            schedule.tfinal = min(int(self.config.final * total), total - schedule.tinit - 1)
        return 0

    def filter_gradients(self, model, step: int) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n and p.grad is not None}

    def after_step(self, model, step: int) -> None:
        params = dict(self.model.named_parameters())
        for n, g in self.grads.items():
            params[n].grad = g
        self.model.base_model.update_and_allocate(step)
        for n in self.grads:
            params[n].grad = None
        self.grads = {}
        self.steps_seen += 1

    def current_ranks(self) -> dict[str, int]:
        """Every adapted module's rank now: its unmasked triplets."""
        return {module_of(n): int((p.detach() != 0).sum()) for n, p in self.model.named_parameters() if ".lora_E." in n}

    def finish(self, model, ctx: StageContext):
        if self._schedule().total_step == UNKNOWN:
            raise ValueError("adalora: the stage ended within its first epoch, before the rank schedule could be set")
        self.ranks.append(self.current_ranks())
        merged = model.merge_and_unload()
        self.model = None
        return merged

    def row_notes(self) -> dict:
        if not self.ranks:
            return {}
        last = self.ranks[-1]
        return {"adalora_ranks": dict(last), "adalora_rank_total": sum(last.values())}

    def state_dict(self) -> dict:
        return {"ranks": [dict(r) for r in self.ranks]}

    def load_state_dict(self, state: dict) -> None:
        self.ranks = [{k: int(v) for k, v in r.items()} for r in state.get("ranks", [])]


register_part("adalora", AdaLoraConfig, AdaLora, "LoRA with per-module ranks allocated during training by importance (AdaLoRA via PEFT), merged after the stage; the final ranks are reported")
