"""Ada-QPacknet-style packing: each stage trains only the block weights no earlier stage
claimed, keeps the largest `keep` share of its update there (the rest of its update is
pruned back to the stage's start, freeing those weights for later stages), quantises what
it keeps to `bits` bits, and claims those weights: no later stage can move them (after
Pietron et al. 2023, "Ada-QPacknet -- adaptive pruning with bit width reduction as an
efficient continual learning method without forgetting", which builds on PackNet,
Mallya & Lazebnik 2018).

Every 2-D weight inside the transformer blocks is packed; embeddings, norms and biases
train freely. Claimed weights are held by a gradient mask (ckl.methods.scope._masks:
with AdamW and no weight decay a masked weight never moves, bit for bit). After the stage,
in each matrix, the update D = theta - theta_start of the free weights is ranked by |D|;
the top `keep` share of the matrix's free weights keep their update, rounded to a
symmetric `bits`-bit grid with the matrix's absmax scale (0 = full precision), the rest
return to theta_start. The share of each matrix claimed so far is a row note
(`qpacknet_claimed`, the mean over matrices).

Deviations: a pretrained LM's weights cannot be zeroed as PackNet prunes a network trained
from scratch, so the *update* is pruned (to the stage's start) and quantised, not the
weight; one `keep` and one bit width for every matrix and stage, where Ada-QPacknet
searches both per task and layer; no retraining after pruning; no task identity at
inference (every stage's claimed weights act on every input, as a merged model must).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_number
from ckl.methods.base import StageContext, register_part
from ckl.methods.merge.graft import round_symmetric
from ckl.methods.penalty.l2 import base_parameters
from ckl.methods.scope._masks import MaskedUpdates
from ckl.methods.scope.ssu import block_matrices


@dataclass
class QPacknetConfig:
    keep: float = field(default=0.1, metadata={"help": "share of each block matrix's still-free weights a stage keeps its update in (and claims), in (0, 1]"})
    bits: int = field(default=8, metadata={"help": "bits of the kept updates (symmetric, one absmax scale per matrix); 0 = full precision"})

    def __post_init__(self) -> None:
        check_number(self.keep, "keep", low=0, high=1, low_open=True)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (self.bits == 0 or 2 <= self.bits <= 16):
            raise ConfigError("bits", f"bits must be 0 (full precision) or an integer in [2, 16], got {self.bits!r}")


class QPacknet(MaskedUpdates):
    name = "qpacknet"

    def __init__(self, config: QPacknetConfig):
        self.config = config
        self.claimed: dict[str, torch.Tensor] = {}  # per block matrix, the weights earlier stages claimed (bool)
        self.masks: dict[str, torch.Tensor] = {}
        self.start: dict[str, torch.Tensor] = {}
        self.frozen = []

    def prepare(self, model, ctx: StageContext):
        params = base_parameters(model)
        self.start = {}
        self.masks = {}
        for name in block_matrices(model):
            p = params[name]
            claimed = self.claimed.setdefault(name, torch.zeros(p.shape, dtype=torch.bool))
            self.masks[name] = ~claimed
            self.start[name] = p.detach().to("cpu", copy=True)
        return model

    def finish(self, model, ctx: StageContext):
        model = super().finish(model, ctx)
        params = base_parameters(model)
        with torch.no_grad():
            for name, theta_start in self.start.items():
                p, free = params[name], ~self.claimed[name]
                delta = p.detach().cpu().float() - theta_start.float()
                k = int(round(self.config.keep * int(free.sum())))
                keep = torch.zeros_like(free)
                if k:
                    ranked = torch.where(free, delta.abs(), torch.full_like(delta, -1.0)).flatten()
                    keep.view(-1)[torch.topk(ranked, k).indices] = True
                kept = torch.where(keep, delta, torch.zeros_like(delta))
                if self.config.bits:
                    kept = torch.where(keep, round_symmetric(kept, self.config.bits, per_row=False), kept)
                p.copy_((theta_start.float() + kept).to(p.dtype).to(p.device))
                self.claimed[name] |= keep
        self.start = {}
        return model

    def row_notes(self) -> dict:
        if not self.claimed:
            return {}
        shares = [float(c.float().mean()) for c in self.claimed.values()]
        return {"qpacknet_claimed": round(sum(shares) / len(shares), 4)}

    def state_dict(self) -> dict:
        return {f"claimed.{n}": c for n, c in self.claimed.items()}

    def load_state_dict(self, state: dict) -> None:
        self.claimed = {k[8:]: t.bool() for k, t in state.items() if k.startswith("claimed.")}


register_part("qpacknet", QPacknetConfig, QPacknet, "Ada-QPacknet-style packing: each stage trains only unclaimed block weights, keeps its largest updates there (quantised), prunes the rest back and claims the kept weights from later stages")
