"""RECALL-style merging: each block's share of the stage's update is set by how much the
update changed that block's representation of the old knowledge (the seed list's
"RECALL: representation-similarity-weighted layer merging").

RECALL merges models layer by layer with weights computed from the similarity of their
hidden representations on typical samples: a model whose layer represents the reference
samples as the reference model does gets a larger weight at that layer. Here the two
models are the stage-start model (the reference: it holds the old knowledge) and the
trained one, and the samples are documents of the known facts (K0 less what the stage
changes). For block l, s_l is the mean cosine similarity, over the samples' tokens, of
the block's output in the trained and in the start model; the start model's similarity
to itself is 1; a softmax over the two with temperature `temperature` gives the trained
model's weight

    lambda_l = exp(s_l / T) / (exp(1 / T) + exp(s_l / T)),

and `finish` sets theta_l = theta_start + lambda_l * (theta_end - theta_start). A block
whose representation of the old knowledge moved keeps less of its update; one that kept
it keeps up to half (lambda <= 0.5: the start model's weight never falls below the
trained one's). Parameters before the blocks (embeddings, and a tied output head) take
block 0's lambda, those after them the last block's. The lambdas are stored with each row
(`recall_lambdas`).

Deviations: two models (the stage's start and end), not a library of task models; the
similarity is token-wise cosine, not the paper's kernel alignment; the samples are the
stream's known facts rendered as training text, not clustered typical samples.
Composition as for the other rescaling parts: list it before scope parts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_number
from ckl.data.stream import render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.merge.task_arithmetic import RescaleUpdate
from ckl.model.layers import parameter_depths


@dataclass
class RecallConfig:
    # 0.2: on the tiny test model a stage moves the blocks' representations of K0 to cosine
    # ~0.91, 0.82, 0.74 (first to last), giving lambdas 0.39, 0.29, 0.21; at 0.05 they are
    # 0.14, 0.03, 0.01 and almost nothing of the stage is kept (tests/methods/merge/test_recall.py)
    temperature: float = field(default=0.2, metadata={"help": "softmax temperature over the two models' similarities: lower gives the start model more of a block whose representation moved"})
    samples: int = field(default=32, metadata={"help": "documents of known facts whose hidden states are compared"})

    def __post_init__(self) -> None:
        check_number(self.temperature, "temperature", low=0, low_open=True)
        check_count(self.samples, "samples")


def merge_weight(similarity: float, temperature: float) -> float:
    """The trained model's weight at a block: softmax([1, s] / T)[1]."""
    return 1.0 / (1.0 + math.exp((1.0 - similarity) / temperature))


@torch.no_grad()
def block_outputs(model, tokenizer, docs: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each block's output on `docs` (one padded batch) and the real-token mask."""
    was = model.training
    model.eval()
    batch = tokenizer(docs, return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), output_hidden_states=True)
    model.train(was)
    return [h.float().cpu() for h in out.hidden_states[1:]], batch["attention_mask"].bool()


class Recall(RescaleUpdate):
    name = "recall"

    def __init__(self, config: RecallConfig):
        super().__init__(config)
        self.docs: list[str] = []
        self.before: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None
        self.lambdas: list[float] = []
        self.tokenizer = None

    def prepare(self, model, ctx: StageContext):
        parameter_depths(model)  # fail before training on a model whose blocks cannot be found
        changed = {f.id for f in ctx.change.taught()} | {f.id for f in ctx.change.forget} if ctx.change else set()
        known = [f for f in ctx.base if f.id not in changed]
        rng = random.Random(f"recall/{ctx.seed}/{ctx.stage}")
        docs = render_documents(known, ctx.relations, rng, questions=0, qa_subjects=ctx.qa_subjects)
        self.docs = rng.sample(docs, min(self.config.samples, len(docs)))
        self.tokenizer = ctx.tokenizer
        if self.docs:
            self.before, self.mask = block_outputs(model, ctx.tokenizer, self.docs)
        return super().prepare(model, ctx)

    def scale_of(self, model):
        depths, layers = parameter_depths(model)
        if not self.docs:
            self.lambdas = [1.0] * layers  # nothing known to protect: the update stays
        else:
            after, _ = block_outputs(model, self.tokenizer, self.docs)
            self.lambdas = []
            for old, new in zip(self.before, after):
                cos = torch.nn.functional.cosine_similarity(old[self.mask], new[self.mask], dim=-1)
                self.lambdas.append(merge_weight(float(cos.mean()), self.config.temperature))
        self.before, self.mask = [], None
        return lambda name: self.lambdas[min(max(depths[name], 0), layers - 1)]

    def row_notes(self) -> dict:
        return {"recall_lambdas": [round(x, 4) for x in self.lambdas]} if self.lambdas else {}


register_part("recall", RecallConfig, Recall, "RECALL-style merging: each block keeps a share of the stage's update set by how similar its representation of known facts stayed (softmax over the start and trained models)")
