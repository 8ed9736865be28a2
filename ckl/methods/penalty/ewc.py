"""EWC: elastic weight consolidation with a diagonal empirical Fisher (Kirkpatrick et al.
2017, "Overcoming catastrophic forgetting in neural networks"), and its online variant
(Schwarz et al. 2018, "Progress & Compress": one running Fisher F <- gamma * F + F_new and
one anchor, the latest weights).

The added loss is (strength / 2) * sum_k sum_i F_k,i * (theta_i - anchor_k,i)^2:
one term in the online variant, one per earlier stage (and one for the base knowledge)
otherwise, as in the paper's multi-task form.

When it is estimated:
- before stage 1 (`prepare`, when no Fisher exists yet) on the base knowledge
  (`ctx.base`), anchored at the base weights;
- after every stage (`observe`, with the finished, merged model) on the stage's taught
  facts and its corpus documents (continual pre-training), anchored at the new weights.

Estimator (a deviation, for cost): the Fisher is the mean over batches of the *squared
gradient of the batch's mean next-token loss*, on the facts' training documents
(`render_documents`, `batch_size` documents a batch, `samples` documents at most), with
the model's own labels (empirical, not sampled, Fisher). With batch_size = 1 this is the
per-document empirical Fisher; larger batches are cheaper, and since the square of a
mean is smaller than the mean of squares, they shrink the Fisher (the noise part by about
1 / batch_size), which `strength` absorbs. Under data parallelism the batches are dealt
round-robin to the processes, each sums its squared gradients and the sums are added
across processes (`accelerator.reduce`) before dividing by the number of batches, so the
estimate is the one a single process makes.

With LoRA (a PEFT model during training) the penalty acts on the effective weights
W + scale * B A of adapted layers (see `ckl.methods.penalty.l2.trainable_weights`), so it is the
same penalty as for full fine-tuning, restricted to the weights LoRA can move. Frozen
weights are left out (their term is constant). Under FSDP (sharded flat parameters)
names do not match the anchor and the penalty is silently empty: not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_flag, check_number, check_unit
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.penalty._estimate import gradient_statistic
from ckl.methods.penalty.l2 import AnchorCache, snapshot, squared_distance
from ckl.data.stream import Change, render_documents
from ckl.train.loop import rng_for


@dataclass
class EwcConfig:
    strength: float = field(default=1e4, metadata={"help": "lambda: loss += lambda/2 * sum F (theta - anchor)^2"})
    online: bool = field(default=True, metadata={"help": "one running Fisher F <- gamma F + F_new (Progress & Compress) instead of one penalty per stage"})
    gamma: float = field(default=1.0, metadata={"help": "online decay of the old Fisher, in [0, 1]"})
    samples: int = field(default=256, metadata={"help": "most documents used to estimate each Fisher"})
    batch_size: int = field(default=4, metadata={"help": "documents per squared gradient (1 = per-document empirical Fisher)"})

    def __post_init__(self) -> None:
        check_number(self.strength, "strength", low=0)
        check_flag(self.online, "online")
        check_unit(self.gamma, "gamma")
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


def estimate_fisher(model, tokenizer, documents: list[str], batch_size: int, accelerator=None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over batches of squared gradients of the batch's
    mean next-token loss, for every weight of the underlying model (adapters excluded).

    Returns CPU float32 tensors >= 0 by canonical parameter name (see
    `ckl.methods.penalty._estimate.gradient_statistic`, which also covers data parallelism)."""
    return gradient_statistic(model, tokenizer, documents, batch_size, lambda w, g: g.pow(2), accelerator)


class Ewc(Part):
    name = "ewc"

    def __init__(self, config: EwcConfig):
        self.config = config
        # one (Fisher, anchor) pair per penalty term: a single one when online
        self.terms: list[tuple[AnchorCache, AnchorCache]] = []

    # ------------------------------------------------------------------ hooks
    def prepare(self, model, ctx: StageContext):
        if not self.terms:  # before stage 1: the base knowledge is what must stay
            fisher = self._estimate(model, list(ctx.base), ctx, "base")
            self.terms = [(AnchorCache(fisher), AnchorCache(snapshot(model)))]
        return model

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if self.config.strength == 0:
            return None
        total = None
        for fisher, anchor in self.terms:
            term = squared_distance(model, anchor, weight=fisher)
            if term is not None:
                total = term if total is None else total + term
        return None if total is None else 0.5 * self.config.strength * total

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        taught = change.taught()
        if not taught and not change.corpus:
            return
        new = self._estimate(model, taught, ctx, change.stage, list(change.corpus))
        anchor = AnchorCache(snapshot(model))
        if self.config.online and self.terms:
            old = self.terms[0][0].tensors
            combined = {n: self.config.gamma * old[n] + f if n in old else f for n, f in new.items()}
            self.terms = [(AnchorCache(combined), anchor)]
        else:
            self.terms.append((AnchorCache(new), anchor))

    def _estimate(self, model, facts, ctx: StageContext, label, extra: list[str] | None = None) -> dict[str, torch.Tensor]:
        rng = rng_for(ctx.seed, "ewc", ctx.stage, label)
        documents = render_documents(facts, ctx.relations, rng, qa_subjects=ctx.qa_subjects) + list(extra or [])
        documents = rng.sample(documents, min(self.config.samples, len(documents)))
        return estimate_fisher(model, ctx.tokenizer, documents, self.config.batch_size, ctx.accelerator)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state: dict = {"terms": len(self.terms)}
        for k, (fisher, anchor) in enumerate(self.terms):
            state.update({f"fisher.{k}.{n}": t for n, t in fisher.tensors.items()})
            state.update({f"anchor.{k}.{n}": t for n, t in anchor.tensors.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.terms = []
        for k in range(int(state.get("terms", 0))):
            fisher = {key.split(".", 2)[2]: t for key, t in state.items() if key.startswith(f"fisher.{k}.")}
            anchor = {key.split(".", 2)[2]: t for key, t in state.items() if key.startswith(f"anchor.{k}.")}
            self.terms.append((AnchorCache(fisher), AnchorCache(anchor)))


register_part("ewc", EwcConfig, Ewc, "elastic weight consolidation: Fisher-weighted pull toward earlier stages' weights (online by default)")
