"""Shared set-up of the memory-editor tests (GRACE, key-value memory, IKE)."""

from __future__ import annotations

import torch

from ckl.model import lm
from ckl.methods.base import StageContext
from ckl.data.stream import make_probes


def stage_context(stream, tokenizer, accelerator, stage: int = 1) -> StageContext:
    change = stream.stages[stage - 1]
    return StageContext(stream.relations, stream.base, stage, 0, tokenizer, accelerator, change=change)


def edited_and_other_prompts(stream):
    """Statement prompts of stage 1's updated facts (with their new objects), and of the
    base facts of subjects stage 1 does not touch at all."""
    change = stream.stages[0]
    edited = make_probes([r.fact for r in change.update], stream.relations, "e", 1, "update", ("statement",), 10)
    subjects = {r.fact.subject for r in change.update} | {f.subject for f in change.forget}
    others = [f for f in stream.invariant() if f.subject not in subjects]
    other = make_probes(others, stream.relations, "o", 0, "base", ("statement",), 10)
    return edited, other


@torch.no_grad()
def logits(model, tokenizer, prompts):
    """Last-position logits of each prompt, one prompt at a time (no padding effects)."""
    model.eval()
    out = []
    for p in prompts:
        ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]])
        out.append(model(input_ids=ids).logits[0, -1])
    return torch.stack(out)


def greedy_first(model, tokenizer, probes) -> list[bool]:
    """Whether the first greedy token after each probe's prompt is its answer's first token."""
    top = logits(model, tokenizer, [p.prompt for p in probes]).argmax(-1)
    firsts = [tokenizer(" " + p.answer, add_special_tokens=False)["input_ids"][0] for p in probes]
    return [int(t) == f for t, f in zip(top, firsts)]


def load(model_dir):
    return lm.load(model_dir)
