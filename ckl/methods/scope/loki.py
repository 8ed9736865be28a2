"""LoKI: implant new knowledge into the feed-forward slots that matter least to the old
(Wang et al. 2025, "LoKI: Low-damage Knowledge Implanting of Large Language Models").

A feed-forward block is a key-value memory: hidden unit j of an MLP is a slot, made of
its key (unit j's input weights and bias in the up-projection, and the gate's in gated
MLPs) and its value (row j of the down-projection's input). Before each stage every slot
of every block is scored on documents of the knowledge to keep (the base knowledge K0
before stage 1; each stage's taught facts are added after it, decayed by `gamma`): the sum
over the slot's weights of |theta * dL/dtheta| (`ckl.methods.penalty._estimate`). Only
the `fraction` lowest-scoring slots of each block train; every other slot, the attention,
the embeddings and the norms are frozen (requires_grad off, and a gradient mask inside the
MLP weights, `ckl.methods.scope._masks`).

Deviations: the paper attributes knowledge to slots with its Knowledge Vector Attribution
on the model's general-knowledge data and chooses how many slots each layer gets from
that; here the score is |theta * grad| on the knowledge to keep and every layer trains
the same fraction of its slots. Architectures whose MLP keeps up- and down-projections
under other names than ckl's locator knows (`ckl.model.layers`) are refused.
Measured on the tiny test world (tests/methods/scope/test_loki.py, seed 0, one thread, a
quarter of the slots): 10 epochs at lr 3e-3 keep K0 at 0.95 (naive 0.35) but learn stage 1
to 0.07 (naive 0.39); 30 epochs at lr 1e-2 keep 0.467 and learn 0.25. The slot scope works
as a mechanism; its trade-off against simply training less is not shown there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_number, check_unit
from ckl.data.stream import Change, render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.penalty._estimate import gradient_statistic
from ckl.methods.penalty.l2 import canonical_name
from ckl.methods.scope._masks import MaskedUpdates, unit_mask
from ckl.model.layers import blocks, is_transposed, key_size, mlp_linears, mlp_output_projection
from ckl.train.loop import rng_for


@dataclass
class LokiConfig:
    fraction: float = field(default=0.1, metadata={"help": "share of each block's feed-forward slots that train (the least important to the knowledge to keep), in (0, 1]"})
    gamma: float = field(default=1.0, metadata={"help": "decay of earlier scores when a stage's taught facts add theirs, in [0, 1]"})
    samples: int = field(default=256, metadata={"help": "most documents scored each time"})
    batch_size: int = field(default=4, metadata={"help": "documents per gradient when scoring"})

    def __post_init__(self) -> None:
        check_number(self.fraction, "fraction", low=0, low_open=True, high=1)
        check_unit(self.gamma, "gamma")
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


def slot_layout(model) -> list[dict]:
    """Per block: its MLP's slot count and, for each weight of the MLP that holds a part of
    every slot, how (`(name, transposed, along_output)`: the slot is an output unit of the
    up/gate projections and an input unit of the down projection).

    Raises:
        ValueError: a block whose MLP has no up-projection ckl can find.
    """
    modules = dict(model.named_modules())
    linears = mlp_linears(model)
    layout = []
    for i in range(len(blocks(model))):
        down = mlp_output_projection(model, i)
        inner = key_size(down)
        down_name = next(n for n, m in modules.items() if m is down)
        prefix = down_name.rsplit(".", 1)[0]
        parts = [(f"{down_name}.weight", is_transposed(down), False)]
        for name in sorted(linears):
            m = modules[name]
            if name == down_name or not name.startswith(prefix + "."):
                continue
            out = m.weight.shape[1] if is_transposed(m) else m.weight.shape[0]
            if out == inner:  # an up (or gate) projection: one output unit per slot
                parts.append((f"{name}.weight", is_transposed(m), True))
                if getattr(m, "bias", None) is not None:
                    parts.append((f"{name}.bias", None, True))
        if len(parts) < 2:
            raise ValueError(f"loki: block {i}'s MLP has no up-projection ckl can find beside {down_name}")
        layout.append({"slots": inner, "parts": parts})
    return layout


class Loki(MaskedUpdates):
    name = "loki"

    def __init__(self, config: LokiConfig):
        self.config = config
        self.scores: list[torch.Tensor] | None = None  # per block, one score per slot
        self.trained: list[torch.Tensor] = []  # per block, the slots that train this stage
        self.masks: dict[str, torch.Tensor] = {}
        self.frozen = []

    def prepare(self, model, ctx: StageContext):
        layout = slot_layout(model)
        if self.scores is None:  # before stage 1: the base knowledge is what must stay
            self.scores = self._score(model, list(ctx.base), ctx, "base", layout)
        params = {canonical_name(n): p for n, p in model.named_parameters()}
        self.trained, self.masks = [], {}
        for block, scores in zip(layout, self.scores):
            k = max(1, int(round(self.config.fraction * block["slots"])))
            slots = torch.argsort(scores, stable=True)[:k]  # the least important
            self.trained.append(slots)
            for name, transposed, along_output in block["parts"]:
                key = canonical_name(name)
                shape = params[key].shape
                if transposed is None:  # a bias: one entry per slot
                    mask = torch.zeros(shape, dtype=torch.bool)
                    mask[slots] = True
                else:
                    mask = unit_mask(shape, slots, transposed, along_output)
                self.masks[key] = mask
        self.freeze(p for name, p in model.named_parameters() if canonical_name(name) not in self.masks)
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        taught = change.taught()
        if not taught:
            return
        new = self._score(model, taught, ctx, change.stage, slot_layout(model))
        self.scores = [self.config.gamma * old + s for old, s in zip(self.scores, new)]

    def _score(self, model, facts, ctx: StageContext, label, layout) -> list[torch.Tensor]:
        rng = rng_for(ctx.seed, "loki", ctx.stage, label)
        documents = render_documents(facts, ctx.relations, rng, qa_subjects=ctx.qa_subjects)
        documents = rng.sample(documents, min(self.config.samples, len(documents)))
        element = gradient_statistic(model, ctx.tokenizer, documents, self.config.batch_size, lambda w, g: (w * g).abs(), ctx.accelerator)
        out = []
        for block in layout:
            total = torch.zeros(block["slots"])
            for name, transposed, along_output in block["parts"]:
                e = element[canonical_name(name)]
                if transposed is None:
                    total += e
                else:
                    column = transposed == along_output
                    total += e.sum(dim=0) if column else e.sum(dim=1)
            out.append(total)
        return out

    def state_dict(self) -> dict:
        return {} if self.scores is None else {f"score.{i}": s for i, s in enumerate(self.scores)}

    def load_state_dict(self, state: dict) -> None:
        scores = sorted(((int(k[6:]), t) for k, t in state.items() if k.startswith("score.")))
        self.scores = [t for _, t in scores] or None


register_part("loki", LokiConfig, Loki, "train only the feed-forward slots least important to the knowledge to keep; everything else frozen")
