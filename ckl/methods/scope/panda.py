"""PANDA-style prompt transfer with distillation: each stage's prompt starts as a copy of
the previous stage's (prompt transfer) and trains with the next-token loss plus a
distillation term that keeps the model's predictions with the new prompt close to those
with the previous one; the model's own weights never change (after Zhong et al. 2022,
"PANDA: Prompt Transfer Meets Knowledge Distillation for Efficient Model Adaptation").

Each stage adds a prompt of `tokens` input-only tokens (ckl.methods.scope._tokens),
initialised from the previous stage's prompt (the first from random vocabulary rows), and
only the newest prompt goes in front of documents and probes. The distillation term is
`alpha` x T^2 x KL(teacher || student) over the document tokens, with temperature
`temperature`; the teacher is the same frozen model reading the previous prompt in the
same positions (its tokens swapped in for the new prompt's).

Deviations: the source prompt is always the previous stage's (PANDA picks a source task
by a transferability metric), and the teacher is the frozen model with the source prompt
on the current data, as in the paper, but across stages of one stream rather than from a
source task to a target task. Forget requests are not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import check_number
from ckl.methods.base import StageContext, register_method
from ckl.methods.scope._tokens import PromptTokens, PromptTokensConfig
from ckl.train.batching import IGNORE
from ckl.train.loop import LossTerm


@dataclass
class PandaConfig(PromptTokensConfig):
    alpha: float = field(default=1.0, metadata={"help": "weight of the distillation term"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the distillation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.alpha, "alpha", low=0)
        check_number(self.temperature, "temperature", low=0, low_open=True)


class _Distil(LossTerm):
    """alpha T^2 KL(teacher || student) on the batch's target tokens; the teacher reads the
    previous prompt's tokens where the batch has the new prompt's."""

    reads_batch = True

    def __init__(self, new_ids: list[int], old_ids: list[int], alpha: float, temperature: float):
        self.new, self.old = torch.tensor(new_ids), torch.tensor(old_ids)
        self.alpha, self.temperature = alpha, temperature
        self.last: float | None = None

    def loss(self, model, batch, outputs, step):
        if batch is None or not self.alpha:
            return None
        ids = batch["input_ids"]
        teacher_ids = ids.clone()
        for new, old in zip(self.new.tolist(), self.old.tolist()):
            teacher_ids[ids == new] = old
        with torch.no_grad():
            teacher = model(input_ids=teacher_ids, attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        student = outputs.logits[:, :-1].float()
        mask = batch["labels"][:, 1:] != IGNORE
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="none").sum(-1)
        value = self.alpha * t * t * kl[mask].mean() if mask.any() else student.sum() * 0
        self.last = float(value.detach())
        return value


class Panda(PromptTokens):
    name = "panda"
    module_name = "panda_prompts"

    def __init__(self, config: PandaConfig) -> None:
        super().__init__(config)
        self.distil: _Distil | None = None

    def init_bank(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.bank is not None and len(self.bank.banks):
            return self.bank.banks[-1].detach().float().clone()  # prompt transfer: start from the previous stage's
        return super().init_bank(weight, generator)

    def shown(self) -> list[int]:
        return [len(self.banks) - 1] if self.banks else []

    def terms(self, model, ctx: StageContext) -> list:
        self.distil = None
        if len(self.banks) < 2:
            return []
        ids = ctx.tokenizer.convert_tokens_to_ids
        self.distil = _Distil(ids(self.banks[-1]), ids(self.banks[-2]), self.config.alpha, self.config.temperature)
        return [self.distil]

    def row_notes(self) -> dict:
        return {} if self.distil is None or self.distil.last is None else {"panda_distillation": round(self.distil.last, 4)}


register_method("panda", PandaConfig, Panda, "PANDA-style prompt transfer: each stage's prompt starts from the previous one and is distilled from the model reading it; only the newest prompt is read; no weight change", ["learn", "update", "edit"])
