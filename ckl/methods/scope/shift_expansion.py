"""Task-free expansion: the model grows new blocks only when the data it is handed has
shifted away from what it has already learned, detected from the data itself, not told by
a stage boundary (the expansion-on-novelty rule of task-free continual learning: Aljundi et
al. 2019, "Task-Free Continual Learning"; Lee et al. 2020, CN-DPM; here with LLaMA Pro's
identity blocks, `ckl.methods.scope.expansion`).

A scope part. Before training on new facts the part scores a sample of them under the current model
(the mean negative log-probability of each fact's object after its statement prompt: the
content, not the templates all facts share) and compares it with the same loss of the
facts it last trained on, measured right after that training (at first: the base model's
own knowledge, K0):

    shift = loss(incoming) / loss(reference)

If shift >= `threshold`, the data is new: `blocks` identity blocks are inserted (as
`expansion` does: the function is unchanged) and only they train. Otherwise the data is
more of the same: no block is added and the blocks of the latest expansion keep training
(everything else frozen). After training the reference becomes the loss of the trained
data. The decision and the shift of every call are the part's state and row notes
(`data_shift`, `expanded`), so a run shows where the part saw a shift.

Deviations: task-free methods watch the shift batch by batch inside one stream; ckl's loop
trains a stage's data in one go, so the part decides once per call of the method, from the
data's loss alone (it never reads the stage number or the change kinds). Data that is more
of the same before any expansion trains the whole model (there are no new blocks yet).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ckl.core.checks import check_count, check_number
from ckl.data.stream import make_probes
from ckl.methods.base import StageContext, register_part
from ckl.methods.scope.expansion import Expansion, ExpansionConfig
from ckl.model.layers import find_blocks
from ckl.model.scoring import score_probes


@dataclass
class ShiftExpansionConfig(ExpansionConfig):
    threshold: float = field(default=1.5, metadata={"help": "expand when the incoming data's mean loss is at least this multiple of the last trained data's"})
    samples: int = field(default=128, metadata={"help": "most facts scored to measure a loss"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.threshold, "threshold", low=1)
        check_count(self.samples, "samples")


class ShiftExpansion(Expansion):
    name = "shift_expansion"

    def __init__(self, config: ShiftExpansionConfig):
        super().__init__(config)
        self.reference: float | None = None  # mean loss of the last trained data, right after training
        self.latest: list[int] = []  # indices of the latest expansion's blocks in the current model
        self.decisions: list[dict] = []  # per call: {"shift": float, "expanded": bool}

    def _loss(self, model, ctx: StageContext, facts, label: str) -> float:
        """Mean negative log-probability of the facts' objects after their statement prompts:
        the facts' content, not the templates every fact shares."""
        facts = list(facts)
        facts = random.Random(f"ckl.shift_expansion/{ctx.seed}/{ctx.stage}/{label}").sample(facts, min(self.config.samples, len(facts)))
        probes = make_probes(facts, ctx.relations, "shift", 0, "learn", ("statement",), max_candidates=1)
        training = model.training
        logprob = score_probes(model, ctx.tokenizer, probes).logprob
        model.train(training)
        return float(-logprob.mean()) if len(logprob) else float("nan")

    def prepare(self, model, ctx: StageContext):
        taught = ctx.change.taught() if ctx.change is not None else []
        if not taught:  # nothing to learn (a forget-only stage): keep the latest blocks training
            return self._keep_training(model)
        if self.reference is None:
            self.reference = self._loss(model, ctx, ctx.base, "reference")
        shift = self._loss(model, ctx, taught, "incoming") / self.reference
        expanded = bool(shift >= self.config.threshold)
        self.decisions.append({"shift": float(shift), "expanded": expanded})
        if not expanded:
            return self._keep_training(model)
        before = {id(b) for b in find_blocks(model)[1]}
        model = super().prepare(model, ctx)
        self.latest = [i for i, b in enumerate(find_blocks(model)[1]) if id(b) not in before]
        return model

    def _keep_training(self, model):
        self.frozen = []
        if self.latest:
            _, blocks = find_blocks(model)
            keep = {id(p) for i in self.latest for p in blocks[i].parameters()}
            self.freeze(p for p in model.parameters() if id(p) not in keep)
        return model

    def observe(self, model, change, ctx: StageContext) -> None:
        taught = change.taught()
        if taught:
            self.reference = self._loss(model, ctx, taught, "trained")

    def row_notes(self) -> dict:
        if not self.decisions:
            return {}
        return {"data_shift": self.decisions[-1]["shift"], "expanded": self.decisions[-1]["expanded"]}

    def state_dict(self) -> dict:
        return {"reference": self.reference, "latest": list(self.latest), "decisions": [dict(d) for d in self.decisions]}

    def load_state_dict(self, state: dict) -> None:
        self.reference = state.get("reference")
        self.latest = [int(i) for i in state.get("latest", [])]
        self.decisions = [dict(d) for d in state.get("decisions", [])]


register_part("shift_expansion", ShiftExpansionConfig, ShiftExpansion, "task-free expansion: identity blocks added only when the incoming data's loss shows a shift from what was last learned; otherwise the latest blocks keep training")
