"""Prompt decoupling against over-forgetting (Chen et al. 2025, "SafeEraser: Enhancing
Safety in Multimodal Large Language Models through Multimodal Machine Unlearning", its
prompt-decouple loss). Compose with an unlearning part: `idk+prompt_decouple`,
`ga+prompt_decouple`.

Unlearning a fact about a person tends to take the person's other facts with it (the
forgetting boundary): a model taught to refuse "Where was Ada born?" starts refusing
everything about Ada. SafeEraser pairs the forgotten subject with questions the model
must still answer and trains those answers beside the forgetting. Here, for every stage
with deletion requests, the decoupled set is every still-true fact of the forgotten
subjects that the stage does not touch, rendered with the training templates, and each
step adds

    weight * next-token loss on the next batch of the decoupled set.

Over-forgetting is measured by every unlearning run: `kept refusals`, the share of kept
facts answered with a refusal (SafeEraser's safe answer refusal rate), and the boundary
retention. tests/methods/unlearn/test_prompt_decouple.py shows it working: with the term,
`idk` keeps more of the forgotten people's other facts at the same forgetting.

Deviations: SafeEraser decouples image and text (the forgotten image with unrelated
questions); here the subject is the shared part and its other facts are the questions. The
known facts are tracked like the retain set (updates carry their new object, deleted
facts leave), without a size bound, so that every boundary fact is found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_number
from ckl.data.stream import Change
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.unlearn.data import RetainPool, TextBatches

UNBOUNDED = 10**9  # the known facts are all kept: the boundary of any subject must be found


@dataclass
class PromptDecoupleConfig:
    weight: float = field(default=1.0, metadata={"help": "weight of the next-token loss on the forgotten subjects' other facts"})
    batch_size: int = field(default=8, metadata={"help": "documents of the decoupled set per step"})
    max_length: int = field(default=128, metadata={"help": "tokens per document (longer ones are cut)"})

    def __post_init__(self) -> None:
        check_number(self.weight, "weight", low=0)
        check_count(self.batch_size, "batch_size")
        check_count(self.max_length, "max_length")


class PromptDecouple(Part):
    name = "prompt_decouple"

    def __init__(self, config: PromptDecoupleConfig):
        self.config = config
        self.known = RetainPool(UNBOUNDED)
        self.batches: TextBatches | None = None
        self.boundary: list = []
        self.position = 0

    def prepare(self, model, ctx: StageContext):
        self.known.start(ctx.base, ctx.seed)
        forget = list(ctx.change.forget) if ctx.change is not None else []
        subjects = {f.subject for f in forget}
        self.boundary = [f for f in self.known.sample(ctx.change) if f.subject in subjects]
        self.batches = None
        if self.boundary and self.config.weight > 0:
            c = self.config
            self.batches = TextBatches(self.boundary, ctx.relations, ctx.tokenizer, ctx.seed, ("decouple", ctx.stage), c.batch_size, c.max_length, ctx.qa_subjects)
        self.position = 0
        return model

    def loss(self, model, batch, outputs, step: int) -> torch.Tensor | None:
        if self.batches is None:
            return None
        device = next(model.parameters()).device
        decoupled = self.batches.cycle(self.position, device)
        self.position += 1
        return self.config.weight * model(**decoupled).loss

    def finish(self, model, ctx: StageContext):
        self.batches = None
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        self.known.observe(change, ctx.seed)

    def state_dict(self) -> dict:
        return self.known.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.known = RetainPool(UNBOUNDED)
        self.known.load_state_dict(state)


register_part("prompt_decouple", PromptDecoupleConfig, PromptDecouple, "SafeEraser's prompt decoupling: keep answering the forgotten subjects' other facts while unlearning (compose with an unlearning part)")
