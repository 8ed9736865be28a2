"""MedCare-style decoupling: one LoRA aggregates the knowledge, a second aligns the answer
format, kept orthogonal to the first so that alignment does not write over what was
learned (after Liao et al. 2024, "MedCare: Advancing Medical LLMs through Decoupling Clinical
Alignment and Knowledge Aggregation"), on Mix-CPT's schedule (`ckl.methods.data.mix_cpt`).

A scope part with two PEFT adapters on the same layers. The stage's first
`epochs - align_epochs` train its facts as text through the knowledge adapter only; the
last `align_epochs` train question-answer lines of facts the model already knows (Mix-CPT's
alignment set: no question about the stage's facts is ever trained) through the alignment
adapter only, with the knowledge adapter frozen (its gradients dropped, so the optimiser
skips it) and the penalty

    loss += orthogonal * sum over layers ||A_knowledge A_alignment^T||_F^2

(O-LoRA's, `ckl.methods.scope.olora`), which keeps the alignment adapter reading input
directions the knowledge adapter does not. Both merge into the weights after the stage.
The mean squared cosine between the two adapters' rows is the row note
`medcare_overlap` (0: orthogonal, 1 / d_in: random).

Deviations: MedCare's knowledge aggregator is a mixture of LoRA experts trained on many
tasks and its alignment module is trained with a noise aggregator in a second stage; here
each is one LoRA, the two phases run inside every stage, and the alignment data are the
fact store's question-answer lines of known facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import LoraConfig as PeftLoraConfig

from ckl.core.checks import check_number
from ckl.methods.base import StageContext, register_part
from ckl.methods.data.mix_cpt import MixCpt, MixCptConfig
from ckl.methods.penalty.l2 import canonical_name
from ckl.methods.scope.lora import LoraConfig, fan_in_fan_out, wrap
from ckl.methods.scope.olora import subspace_overlap
from ckl.train.loop import rng_for

ADAPTERS = ("knowledge", "alignment")


@dataclass
class MedcareConfig(MixCptConfig):
    r: int = field(default=8, metadata={"help": "rank of each of the two adapters"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    target_modules: str | list[str] = field(default="all-linear", metadata={"help": "PEFT target modules; 'all-linear' = every linear layer but the output head"})
    orthogonal: float = field(default=0.5, metadata={"help": "weight of ||A_knowledge A_alignment^T||_F^2 during the alignment epochs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        LoraConfig(r=self.r, alpha=self.alpha, target_modules=self.target_modules)  # same checks, same messages
        check_number(self.orthogonal, "orthogonal", low=0)


def adapter_rows(model, adapter: str) -> dict[str, torch.nn.Parameter]:
    """Every layer's A matrix (r, d_in) of one adapter, by canonical layer name."""
    from peft.tuners.lora import LoraLayer

    return {canonical_name(n): m.lora_A[adapter].weight for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


class Medcare(MixCpt):
    name = "medcare"

    def __init__(self, config: MedcareConfig):
        super().__init__(config)
        self.rows: dict[str, dict[str, torch.nn.Parameter]] = {}
        self.params: dict[str, list[torch.nn.Parameter]] = {}
        self.ctx: StageContext | None = None
        self.overlaps: list[float] = []

    def prepare(self, model, ctx: StageContext):
        super().prepare(model, ctx)
        c = self.config
        peft_config = PeftLoraConfig(fan_in_fan_out=fan_in_fan_out(model), r=c.r, lora_alpha=c.alpha, target_modules=c.target_modules, task_type="CAUSAL_LM")
        model = wrap(model, peft_config, ctx, "medcare", adapter_name=ADAPTERS[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng_for(ctx.seed, "medcare", ctx.stage, "alignment").randrange(2**31))
            model.add_adapter(ADAPTERS[1], peft_config)
        model.base_model.set_adapter(list(ADAPTERS))  # both active (and trainable: the optimiser holds both)
        self.rows = {a: adapter_rows(model, a) for a in ADAPTERS}
        self.params = {a: [p for n, p in model.named_parameters() if f".{a}." in n and "lora_" in n] for a in ADAPTERS}
        self.ctx = ctx
        return model

    def filter_gradients(self, model, step: int) -> None:
        idle = ADAPTERS[0] if self.aligning(self.ctx) else ADAPTERS[1]
        for p in self.params.get(idle, []):
            p.grad = None  # the optimiser skips it: not even Adam's momentum moves it

    def loss(self, model, batch, outputs, step: int) -> torch.Tensor | None:
        if not self.aligning(self.ctx) or self.config.orthogonal == 0:
            return None
        knowledge, alignment = self.rows[ADAPTERS[0]], self.rows[ADAPTERS[1]]
        terms = [(knowledge[n].detach() @ alignment[n].T).pow(2).sum() for n in alignment if n in knowledge]
        return self.config.orthogonal * torch.stack(terms).sum() if terms else None

    def finish(self, model, ctx: StageContext):
        knowledge, alignment = self.rows[ADAPTERS[0]], self.rows[ADAPTERS[1]]
        per_layer = [float(subspace_overlap(knowledge[n].detach(), alignment[n].detach())) for n in alignment if n in knowledge]
        self.overlaps.append(sum(per_layer) / len(per_layer) if per_layer else 0.0)
        self.rows, self.params, self.ctx = {}, {}, None
        return model.merge_and_unload()

    def row_notes(self) -> dict:
        return {"medcare_overlap": self.overlaps[-1]} if self.overlaps else {}


register_part("medcare", MedcareConfig, Medcare, "MedCare-style decoupling: a knowledge LoRA learns the stage's facts, then an alignment LoRA, kept orthogonal to it, learns the answer format on known facts; both merged")
