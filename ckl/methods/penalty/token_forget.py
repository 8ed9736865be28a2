"""Token forgetting: learn the training tokens that help, unlearn the ones that do not
(Taheri Ghahrizjani et al. 2025, "Forgetting: A New Mechanism Towards Better Large Language
Model Fine-tuning").

The paper scores every training token by its influence, the drop of its loss from the
base model to a reference model fine-tuned on part of the data (loss_base - loss_ref),
calls the top `positive` share of tokens positive and the rest negative, and trains on

    mean CE over positive tokens - lambda(t) * mean CE over negative tokens

with lambda growing linearly over training from 0 to `scale` (its t_max - t_min). Here,
at `prepare`:

1. a copy of the stage-start model is fine-tuned on a `reference_fraction` share of the
   stage's facts (seeded) for `reference_epochs` epochs (the reference model);
2. the stage's documents are scored once with both models, and the score that leaves the
   top `positive` share of label tokens above it becomes the threshold.

At every step, each label token of the batch is scored again with both frozen models (a
token's loss depends on its context, and packing changes contexts every epoch) and is
positive when its score reaches the threshold; the part's term turns the loop's next-token
loss into the objective above.

Deviations: lambda rises per epoch (epoch / epochs), not per step, because a part learns
the stage's epoch budget but not its step count; the threshold is fixed from one
rendering of the stage's documents (the paper ranks its fixed corpus's tokens once).
Refused under data parallelism: the loop weights the next-token loss per process, so the
term could not replace it exactly. Cost: a reference fine-tuning per stage, and two frozen
models' forward passes per step.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.stream import render_documents
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.distill._frozen import FrozenCopy
from ckl.train.batching import IGNORE, pack
from ckl.train.loop import TrainConfig, rng_for, train


@dataclass
class TokenForgetConfig:
    positive: float = field(default=0.7, metadata={"help": "rho: share of label tokens learned (the highest influence); the rest are unlearned"})
    scale: float = field(default=0.25, metadata={"help": "lambda at the end of the stage: weight of the negative tokens' loss, subtracted (rises linearly from 0)"})
    reference_fraction: float = field(default=0.5, metadata={"help": "share of the stage's facts the reference model is fine-tuned on"})
    reference_epochs: int = field(default=5, metadata={"help": "epochs of the reference model's fine-tuning"})
    reference_lr: float = field(default=1e-3, metadata={"help": "learning rate of the reference model's fine-tuning"})

    def __post_init__(self) -> None:
        check_number(self.positive, "positive", low=0, low_open=True, high=1)
        check_number(self.scale, "scale", low=0)
        check_number(self.reference_fraction, "reference_fraction", low=0, low_open=True, high=1)
        check_count(self.reference_epochs, "reference_epochs")
        check_number(self.reference_lr, "reference_lr", low=0, low_open=True)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy (B, L-1) and the mask of label tokens (B, L-1)."""
    targets = labels[:, 1:]
    valid = targets != IGNORE
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp_min(0), reduction="none")  # (B, L-1)
    return ce * valid, valid


def influence(start: FrozenCopy, reference: FrozenCopy, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each label token's loss under the stage-start model minus under the reference (B, L-1),
    and the label mask."""
    base_ce, valid = token_losses(start.logits(batch), batch["labels"])
    ref_ce, _ = token_losses(reference.logits(batch), batch["labels"])
    return base_ce - ref_ce, valid


class TokenForget(Part):
    name = "token_forget"
    reads_batch = True

    def __init__(self, config: TokenForgetConfig):
        self.config = config
        self.start: FrozenCopy | None = None
        self.reference: FrozenCopy | None = None
        self.threshold = 0.0
        self.ctx: StageContext | None = None
        self.last_negative = 0.0  # share of the last batch's label tokens that were unlearned

    def prepare(self, model, ctx: StageContext):
        if ctx.accelerator is not None and ctx.accelerator.num_processes > 1:
            raise ConfigError("token_forget", "token_forget runs on one process only: its term replaces the next-token loss, which the loop weights per process under data parallelism")
        facts = ctx.change.taught() if ctx.change is not None else []
        self.ctx = ctx
        if not facts:
            self.start = self.reference = None
            return model
        c = self.config
        self.start = FrozenCopy(model)
        rng = random.Random(f"ckl.token_forget/{ctx.seed}/{ctx.stage}")
        subset = rng.sample(facts, max(1, round(c.reference_fraction * len(facts))))
        reference = copy.deepcopy(self.start.model).train()
        for p in reference.parameters():
            p.requires_grad_(True)
        train(reference, ctx.tokenizer,
              lambda epoch: render_documents(subset, ctx.relations, rng_for(ctx.seed, "token_forget", ctx.stage, epoch), qa_subjects=ctx.qa_subjects),
              TrainConfig(epochs=c.reference_epochs, lr=c.reference_lr), ctx.accelerator, seed=ctx.seed)
        self.reference = FrozenCopy(reference)
        documents = render_documents(facts, ctx.relations, rng_for(ctx.seed, "docs", ctx.stage, 0), qa_subjects=ctx.qa_subjects)
        input_ids, mask, labels = pack(ctx.tokenizer, documents, 128)
        scores = []
        for begin in range(0, len(input_ids), 32):
            batch = {"input_ids": input_ids[begin:begin + 32], "attention_mask": mask[begin:begin + 32], "labels": labels[begin:begin + 32]}
            score, valid = influence(self.start, self.reference, batch)
            scores.append(score[valid])
        scores = torch.cat(scores)
        self.threshold = float(torch.quantile(scores, 1.0 - c.positive)) if c.positive < 1 else float("-inf")
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.start is None or batch is None:
            return None
        score, valid = influence(self.start, self.reference, batch)
        ce, _ = token_losses(outputs.logits, batch["labels"])
        positive = valid & (score >= self.threshold)
        negative = valid & ~positive
        lam = self.config.scale * self.ctx.epoch / max(1, self.ctx.epochs)
        objective = ce[positive].sum() / positive.sum().clamp_min(1) - lam * ce[negative].sum() / negative.sum().clamp_min(1)
        self.last_negative = float(negative.sum()) / max(1, int(valid.sum()))
        return objective - outputs.loss  # the loop adds its next-token loss back: the total is the objective

    def finish(self, model, ctx: StageContext):
        self.start = self.reference = self.ctx = None
        return model


register_part("token_forget", TokenForgetConfig, TokenForget, "token forgetting: learn the tokens a reference fine-tuning finds useful, unlearn the rest (Taheri Ghahrizjani et al. 2025)")
