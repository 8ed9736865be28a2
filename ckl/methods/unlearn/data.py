"""Forget and retain text for the unlearning parts: facts -> rendered documents -> batches.

Facts are rendered with `ckl.data.stream.render_documents`, the templates the model learned
them from, afresh for every pass over them (new template choices and order each pass,
like the teaching text). Each document is its own row (EOS appended, as in training):
the per-sequence objectives (NPO, SimNPO) need every document as one sequence, which
packing several documents into a block (`ckl.train.batching.pack`) would merge.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from ckl.data.facts import Fact, Relation, fact_row
from ckl.methods.data.replay import ReservoirBuffer
from ckl.data.stream import Change, render_documents
from ckl.train.batching import IGNORE
from ckl.train.loop import rng_for


def document_rows(tokenizer, docs: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """One document per row, EOS appended, cut after `max_length` tokens, right-padded.

    Returns:
        {"input_ids", "attention_mask", "labels"}: (N, L) tensors, labels IGNORE on padding.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = [(ids + [eos])[:max_length] for ids in tokenizer(list(docs), add_special_tokens=False)["input_ids"]] if docs else []
    width = max((len(ids) for ids in encoded), default=1)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # (N, L)
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (N, L)
    if encoded:
        input_ids[mask.bool()] = torch.tensor([t for ids in encoded for t in ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, IGNORE)}


class TextBatches:
    """Batches of the documents of `facts`, re-rendered for every pass.

    Pass p, batch i is `get(p, i)`; every pass has `per_pass` batches (render_documents
    writes the same number of documents for the same facts whatever the random choices).
    """

    def __init__(self, facts: Sequence[Fact], relations: dict[str, Relation], tokenizer, seed: int, tag: tuple, batch_size: int, max_length: int,
                 qa_subjects: frozenset[str] | None = None):
        self.facts, self.relations, self.tokenizer = list(facts), relations, tokenizer
        self.seed, self.tag, self.batch_size, self.max_length = seed, tag, batch_size, max_length
        self.qa_subjects = qa_subjects  # whose questions are rendered (None: everyone's)
        self.documents = len(render_documents(self.facts, relations, random.Random(0), questions=None, qa_subjects=qa_subjects))
        self.per_pass = math.ceil(self.documents / batch_size)
        self._pass: tuple[int, dict[str, torch.Tensor]] | None = None

    def get(self, pass_: int, index: int, device) -> dict[str, torch.Tensor]:
        if self._pass is None or self._pass[0] != pass_:
            rng = rng_for(self.seed, *self.tag, pass_)
            docs = render_documents(self.facts, self.relations, rng, questions=None, qa_subjects=self.qa_subjects)  # every question: sets are small
            rng.shuffle(docs)
            self._pass = (pass_, document_rows(self.tokenizer, docs, self.max_length))
        rows = self._pass[1]
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return {k: v[part].to(device) for k, v in rows.items()}

    def cycle(self, k: int, device) -> dict[str, torch.Tensor]:
        """The k-th batch when passes follow one another without end."""
        return self.get(k // self.per_pass, k % self.per_pass, device)


class RetainPool:
    """A bounded sample of the facts the model should still know: a reservoir of the base
    knowledge, kept true as stages update, edit, teach and forget facts (the same
    bookkeeping as the replay buffer, `ckl.methods.data.replay`)."""

    def __init__(self, capacity: int):
        self.buffer = ReservoirBuffer(capacity)
        self.started = False

    def start(self, base: Sequence[Fact], seed: int) -> None:
        if not self.started:
            rng = rng_for(seed, "retain", 0)
            for fact in base:
                self.buffer.add(fact, rng)
            self.started = True

    def sample(self, change: Change | None) -> list[Fact]:
        """The pool without the facts this stage touches (never retain a forget target)."""
        busy = change.touched() if change is not None else set()
        return [f for f in self.buffer.facts if f.id not in busy]

    def observe(self, change: Change, seed: int) -> None:
        rng = rng_for(seed, "retain", change.stage)
        for record in list(change.update) + list(change.edit):
            self.buffer.replace(record.fact)
        for fact in change.forget:
            self.buffer.remove(fact.id)
        for fact in change.learn:
            self.buffer.add(fact, rng)

    def state_dict(self) -> dict:
        if not self.started:
            return {}
        return {"retain_facts": [fact_row(f) for f in self.buffer.facts], "retain_seen": self.buffer.seen}

    def load_state_dict(self, state: dict) -> None:
        self.started = "retain_facts" in state
        if self.started:
            self.buffer.facts = [Fact(**row) for row in state["retain_facts"]]
            self.buffer.seen = state["retain_seen"]
