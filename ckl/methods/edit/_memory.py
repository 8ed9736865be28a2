"""The frame of a memory editor (GRACE, the gated key-value memory): a method that never
changes a weight but keeps edits as tensors in its state and acts through a forward hook
on one block's MLP (`Hook` below).

A subclass says how a hidden state is routed (`route`: which positions the memory
answers and with what output) and how a batch of edits enters the memory (`learn`); the
frame does the rest the same way for both: learning on the model without the memory, the
hook's attach / detach / restore after a checkpoint reload, and the stage's statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from ckl.core.checks import check_count, check_number
from ckl.data.facts import ChangeRecord, Relation
from ckl.data.stream import Change
from ckl.methods.base import ApplyStats, Method, StageContext
from ckl.methods.edit._prompts import PromptBatch, Row, encode
from ckl.methods.edit._values import ValueSettings
from ckl.model.layers import block_mlp


def check_value_options(steps, lr, stop_loss) -> None:
    """The value-optimisation options both memory editors share."""
    check_count(steps, "steps")
    check_number(lr, "lr", low=0, low_open=True)
    check_number(stop_loss, "stop_loss", low=0)


def value_settings(config, **overrides) -> ValueSettings:
    """The one value optimiser's settings for a memory editor: its steps, learning rate
    and stop loss; no KL term, no clamp, no decay unless overridden; an edit stops on its
    NLL alone."""
    plain = ValueSettings(steps=config.steps, lr=config.lr, kl_weight=0.0, weight_decay=0.0, clamp=None,
                          stop_loss=config.stop_loss, stop_on="nll")
    return replace(plain, **overrides)


def edit_batch(tokenizer, records: Sequence[ChangeRecord], relations: dict[str, Relation]) -> PromptBatch:
    """One row per edit and training template of its relation, teaching the new object,
    encoded by the editing core's one encoder (`_prompts.encode`)."""
    rows = [Row("", template, r.fact.subject, r.fact.object, g)
            for g, r in enumerate(records) for template in relations[r.fact.relation].templates]
    return encode(tokenizer, rows)


class Hook:
    """One forward hook `fn(module, inputs, output) -> output` on a model's MLP; `attach`
    moves it to another model (after a checkpoint reload), `detach` removes it."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.handle = None
        self.model_id: int | None = None

    def attach(self, model: nn.Module, layer: int) -> None:
        if self.handle is not None and self.model_id == id(model):
            return
        self.detach()
        self.handle = block_mlp(model, layer).register_forward_hook(self.fn)
        self.model_id = id(model)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle, self.model_id = None, None


class MemoryEditor(Method):
    kinds = frozenset({"edit", "update"})

    def __init__(self, config) -> None:
        self.config = config
        self.hook = Hook(self._forward)

    # ------------------------------------------------------------------ subclass API
    def empty(self) -> bool:
        raise NotImplementedError

    def route(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """New MLP outputs (N, d) for the flattened MLP inputs `h` (N, d_in) and outputs
        `out` (N, d), or None when no position is answered (the output stays as it is)."""
        raise NotImplementedError

    def learn(self, model, mlp, batch: PromptBatch, records: list) -> None:
        """Add one batch of edit records to the memory (the model has no memory on)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the frame
    def _forward(self, module, inputs, output):
        if self.empty():
            return output
        out = output[0] if isinstance(output, tuple) else output
        new = self.route(inputs[0].reshape(-1, inputs[0].shape[-1]), out.reshape(-1, out.shape[-1]))
        if new is None:
            return output
        out = new.reshape(out.shape)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    def apply(self, model, change: Change, ctx: StageContext):
        start = time.perf_counter()
        records = list(change.edit) + list(change.update)
        stats = ApplyStats(not_applied={k: change.count(k) for k in change.kinds if k not in self.kinds})
        self.hook.detach()  # keys and values are learned on the model without the memory
        model.eval()
        if records:
            self.learn(model, block_mlp(model, self.config.layer), edit_batch(ctx.tokenizer, records, ctx.relations), records)
        self.hook.attach(model, self.config.layer)
        stats.total_params = sum(p.numel() for p in model.parameters())
        stats.seconds = time.perf_counter() - start
        return model, stats

    def kept_outside_weights(self) -> list[str]:
        return [self.name]  # the memory is hooked onto a layer, beside the weights

    def restore(self, model):
        """After the runner reloads a checkpoint: put the memory back on the model."""
        self.hook.attach(model, self.config.layer)
        return model
