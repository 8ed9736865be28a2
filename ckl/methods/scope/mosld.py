"""MoSLD: a mixture of shared LoRAs (Zhao et al. 2024, "MoSLD: An Extremely
Parameter-Efficient Mixture-of-Shared LoRAs for Multi-Task Learning"), on LoRAMoE's
machinery (`ckl.methods.scope.loramoe`: target layers, router, balance loss, persistence).

Every expert of a target layer keeps its own down-projection A_e (what is specific to it)
and all of them share one up-projection B (the general knowledge they have in common):

    y = W x + (alpha / r) * drop(B) sum_e g_e(x) A_e x,    g(x) = softmax(W_r x)

`drop` is dropout on the shared matrix's elements during training (`shared_dropout`; off
at evaluation), which MoSLD uses so that the shared part does not absorb every expert's
update and the experts stay distinct. B starts at zero, so attaching the experts leaves
the outputs unchanged. A layer has (E - 1) * d_out * r fewer parameters than LoRAMoE's.

Deviations: the paper shares the projection across tasks of a multi-task mixture; here the
experts are LoRAMoE's token-routed experts, kept attached across stages, and the balance
loss is LoRAMoE's (the paper has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError, check_number
from ckl.methods.base import register_part
from ckl.methods.scope.loramoe import LoraMoe, LoraMoeConfig, down_projections_and_router


@dataclass
class MosldConfig(LoraMoeConfig):
    shared_dropout: float = field(default=0.1, metadata={"help": "dropout on the shared up-projection's elements during training, in [0, 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.shared_dropout, "shared_dropout", low=0, high=1)
        if self.shared_dropout >= 1:
            raise ConfigError("shared_dropout", f"shared_dropout must be below 1, got {self.shared_dropout!r}")


class SharedUpExperts(torch.nn.Module):
    """N experts' own down-projections, one shared up-projection and the router, for one
    linear layer."""

    def __init__(self, d_in: int, d_out: int, experts: int, r: int, scale: float, dropout: float):
        super().__init__()
        self.scale, self.dropout = scale, dropout
        self.A, self.router = down_projections_and_router(d_in, experts, r)
        self.B = torch.nn.Parameter(torch.zeros(d_out, r))  # shared by every expert

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.softmax(x @ self.router.T, dim=-1)  # (..., E)
        h = torch.einsum("...i,eri,...e->...r", x, self.A, gates)  # (..., r): the gated sum of the experts' down-projections
        up = F.dropout(self.B, self.dropout, training=self.training)  # (out, r)
        return self.scale * h @ up.T, gates  # (..., out), (..., E)


class Mosld(LoraMoe):
    name = "mosld"
    module_name = "ckl_mosld"

    def experts(self, d_in: int, d_out: int) -> torch.nn.Module:
        c = self.config
        return SharedUpExperts(d_in, d_out, c.experts, c.r, c.alpha / c.r, c.shared_dropout)


register_part("mosld", MosldConfig, Mosld, "MoSLD: token-routed LoRA experts with their own down-projections sharing one up-projection, dropout on the shared part (kept attached)")
