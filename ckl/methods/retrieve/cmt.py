"""Compressed memory tokens (CMT): each stage's new knowledge is compressed into a few
memory tokens that the frozen model reads in front of every prompt; none of the model's
own weights ever changes.

The issue names the idea ("compress new knowledge into a memory bank read by the frozen
model, one memory token set per stage"); its nearest published forms are prompt tuning
(Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning": soft
token embeddings trained in front of a frozen model) and the memory of amortized
contexts of Tack et al. 2024 ("Online Adaptation of Language Models with a Memory of
Amortized Contexts", MAC: each document compressed into tokens a frozen model reads).
Here stage j adds `tokens` new input-only tokens (`<cmt j.k>`) to the tokenizer and
trains only their embeddings, by next-token loss on the stage's facts rendered as
training text with the whole memory so far in front (the earlier stages' tokens read but
frozen); every probe is then asked with the whole memory in front of its prompt. The
embeddings live in a module attached beside the model (ckl.methods.scope.attached): a
hook on the input embedding reads them for the memory tokens' ids, so the output layer
never predicts a memory token and the saved model directory stays the plain base model
(the memory is checkpointed in the method's state, and `ckl update` refuses it).

Deviations from MAC: no amortization network that encodes a document into tokens in one
pass and no aggregation across documents; the memory of a stage is fitted by gradient
descent on the stage's text, and stages' memories are concatenated, not aggregated.
Forget requests are not applied (a memory token set cannot drop one fact).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from ckl.core.checks import check_count, check_number
from ckl.data.stream import Change, render_documents
from ckl.methods.base import ApplyStats, Method, StageContext, register_method
from ckl.model.lm import count_parameters
from ckl.methods.scope._tokens import MemoryBank, bank_of
from ckl.methods.scope.attached import attach, host_model, load_module_state, module_state
from ckl.train.loop import TrainConfig, rng_for, train

NAME = "cmt_memory"  # the attached module's name on the host model


@dataclass
class CmtConfig:
    tokens: int = field(default=16, metadata={"help": "memory tokens each stage adds (its knowledge is compressed into their embeddings)"})
    epochs: int = field(default=40, metadata={"help": "passes over the stage's facts while its memory tokens train"})
    lr: float = field(default=1e-2, metadata={"help": "AdamW learning rate of the memory embeddings"})
    batch_size: int = field(default=16, metadata={"help": "blocks per optimiser step"})
    keep: float = field(default=1.0, metadata={"help": "known (base) facts trained with the memory in front, per new fact, each epoch: the memory is read before every prompt, so it must leave what the model knows as it was (0 = none)"})

    def __post_init__(self) -> None:
        check_count(self.tokens, "tokens")
        check_count(self.epochs, "epochs")
        check_count(self.batch_size, "batch_size")
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.keep, "keep", low=0)


class Cmt(Method):
    name = "cmt"
    kinds = frozenset({"learn", "update", "edit"})

    def __init__(self, config: CmtConfig) -> None:
        self.config = config
        self.stages: list[list[str]] = []  # the memory tokens of each stage so far, in order
        self.saved: dict | None = None  # loaded state, attached by `restore`
        self.bank: MemoryBank | None = None  # the attached memory

    def prefix(self) -> str:
        return "".join(t for stage in self.stages for t in stage)

    def _bank(self, model) -> MemoryBank:
        return bank_of(model, NAME)

    def apply(self, model, change: Change, ctx: StageContext):
        start = time.perf_counter()
        stats = ApplyStats(not_applied={k: change.count(k) for k in change.kinds if k not in self.kinds})
        facts = [*change.learn, *(r.fact for r in (*change.update, *change.edit))]
        if not facts:
            stats.total_params = count_parameters(model)[1]
            stats.seconds = time.perf_counter() - start
            return model, stats
        names = [f"<cmt{change.stage}.{k}>" for k in range(self.config.tokens)]
        ctx.tokenizer.add_tokens(names, special_tokens=True)  # input-only: ckl.train.batching.pack never makes them targets
        ids = ctx.tokenizer.convert_tokens_to_ids(names)
        bank = self._bank(model)
        for p in model.parameters():
            p.requires_grad_(False)
        weight = host_model(model).get_input_embeddings().weight.detach()
        # Lester et al.'s initialisation from the vocabulary: embeddings of tokens drawn at random (seeded)
        generator = torch.Generator().manual_seed(rng_for(ctx.seed, "cmt", ctx.stage).randrange(2**31))
        rows = torch.randint(0, weight.shape[0], (self.config.tokens,), generator=generator)
        bank.add(ids, weight[rows.to(weight.device)].float())
        attach(model, NAME, bank, lambda host: None)  # the new parameter joins the keys left out of save_pretrained
        for p in bank.banks[:-1]:
            p.requires_grad_(False)
        self.stages.append(names)
        prefix = self.prefix()

        changed = {f.id for f in facts} | {f.id for f in change.forget}
        known = [f for f in ctx.base if f.id not in changed]

        def documents(epoch: int) -> list[str]:
            rng = rng_for(ctx.seed, "docs", ctx.stage, epoch)
            kept = rng.sample(known, min(len(known), round(self.config.keep * len(facts))))
            return [prefix + " " + doc for doc in render_documents(facts + kept, ctx.relations, rng, qa_subjects=ctx.qa_subjects)]

        config = TrainConfig(epochs=self.config.epochs, lr=self.config.lr, batch_size=self.config.batch_size,
                             block_size=128 + len(self.stages) * self.config.tokens)
        result = train(model, ctx.tokenizer, documents, config, ctx.accelerator,
                       seed=rng_for(ctx.seed, "batches", ctx.stage).randrange(2**31), progress=ctx.progress)
        bank.banks[-1].requires_grad_(False)
        self.bank = bank
        stats.tokens_seen, stats.steps, stats.epochs = result.tokens_seen, result.steps, result.epochs
        stats.trainable_params = self.config.tokens * bank.dim
        stats.total_params = count_parameters(model)[1]
        stats.seconds = time.perf_counter() - start
        return model, stats

    def transform_probes(self, probes):
        """Every probe with the whole memory in front of its prompt."""
        prefix = self.prefix()
        return [replace(p, prompt=f"{prefix} {p.prompt}") for p in probes] if prefix else list(probes)

    def kept_outside_weights(self) -> list[str]:
        return [self.name]

    def state_dict(self) -> dict:
        if self.bank is None:
            return {"cmt": self.saved or {"stages": []}}
        return {"cmt": {"stages": self.stages, **{f"w.{k}": v for k, v in module_state(self.bank).items()}}}

    def load_state_dict(self, state: dict) -> None:
        state = state.get("cmt", {})
        stages = state.get("stages", [])
        if not isinstance(stages, list) or not all(isinstance(s, list) and all(isinstance(t, str) for t in s) for s in stages):
            raise ValueError("cmt: the saved memory is damaged (its stage list has the wrong types); discard the checkpoint and run again")
        self.stages = [list(s) for s in stages]
        self.saved = state

    def restore(self, model):
        """Re-attach the saved memory to a model loaded from a checkpoint."""
        if not self.saved or not self.stages:
            self.saved = None
            return model
        tensors = {k[2:]: v for k, v in self.saved.items() if k.startswith("w.")}
        weight = host_model(model).get_input_embeddings().weight
        bank = self._bank(model)
        for i in range(len(self.stages)):
            bank.banks.append(torch.nn.Parameter(torch.zeros(self.config.tokens, weight.shape[1], device=weight.device), requires_grad=False))
        bank.ids = torch.zeros(len(self.stages) * self.config.tokens, dtype=torch.long, device=weight.device)
        try:
            load_module_state(bank, tensors)
        except RuntimeError as err:
            raise ValueError(f"cmt: the saved memory is damaged ({err}); discard the checkpoint and run again") from None
        for p in bank.banks:
            p.requires_grad_(False)
        attach(model, NAME, bank, lambda host: None)
        self.bank, self.saved = bank, None
        return model


register_method("cmt", CmtConfig, Cmt, "compressed memory tokens: each stage's facts compressed into a few new input-only tokens the frozen model reads before every prompt (prompt tuning per stage); no weight change", ["learn", "update", "edit"])
