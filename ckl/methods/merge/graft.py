"""Knowledge grafting: the stage's update is kept only as a compressed delta grafted onto
the stage-start model (after GraftLLM, "Knowledge Grafting of Large Language Models",
2025: a source model's capability carried to a target as a compressed parameter delta,
the "SkillPack").

A post-step: `prepare` remembers the stage-start weights; `finish` replaces each matrix
parameter's update D = theta_end - theta_start by its best rank-`rank` approximation
(truncated SVD), whose two factors are then quantised to `bits` bits (symmetric, one
absmax scale per row; 0 = no quantisation), and sets theta = theta_start + D_hat. Vectors
(biases, norms) keep their update, quantised likewise. What is grafted is what a
SkillPack would ship: every row notes the delta's bytes in that form against the dense
delta's (`graft_bytes`, `graft_dense_bytes`) and the share of the update's energy
(squared Frobenius norm) the rank keeps (`graft_energy`).

Deviations: one rank for every matrix instead of GraftLLM's module-aware choice of
compression (SVD for some modules, pruning or quantisation for others), no distillation
step to build the source model (the stage's training is the source), and the delta is
grafted into the model it came from, stage after stage. Composition as for the other
rescaling parts: list it before scope parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_count
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.merge.task_arithmetic import StageStart


@dataclass
class GraftConfig:
    rank: int = field(default=16, metadata={"help": "rank of each matrix's grafted update (truncated SVD)"})
    bits: int = field(default=8, metadata={"help": "bits of the update's factors and vectors (symmetric, a scale per row); 0 = keep them in full precision"})

    def __post_init__(self) -> None:
        check_count(self.rank, "rank")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (self.bits == 0 or 2 <= self.bits <= 16):
            raise ConfigError("bits", f"bits must be 0 (no quantisation) or an integer in [2, 16], got {self.bits!r}")


def round_symmetric(x: torch.Tensor, bits: int, per_row: bool = True) -> torch.Tensor:
    """`x` on a symmetric `bits`-bit grid (2^(bits-1) - 1 steps each side of 0) scaled to the
    absmax of each row (`per_row`; a vector is one row) or of the whole tensor. The one
    quantiser of `graft` and `qpacknet`."""
    if not x.numel():
        return x
    rows = x.reshape(1, -1) if x.dim() == 1 or not per_row else x
    levels = 2 ** (bits - 1) - 1
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels
    return (torch.round(rows / scale).clamp(-levels, levels) * scale).reshape(x.shape)


def quantise(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """`x` rounded to `bits`-bit integers with one absmax scale per row (a vector is one
    row), and the bytes that form takes (values, plus a float16 scale per row); bits 0
    returns `x` and its float32 bytes."""
    if bits == 0:
        return x, x.numel() * 4
    rows = 1 if x.dim() == 1 else x.shape[0]
    return round_symmetric(x, bits), (x.numel() * bits + 7) // 8 + rows * 2


def compress(delta: torch.Tensor, rank: int, bits: int) -> tuple[torch.Tensor, int, float]:
    """(the grafted update, its bytes, the share of its energy the rank keeps) of one
    parameter's update: truncated SVD for a matrix, then quantised factors."""
    if delta.dim() != 2:
        q, size = quantise(delta.float(), bits)
        return q.to(delta.dtype), size, 1.0
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, s.numel())
    total = float((s**2).sum())
    kept = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
    left, lsize = quantise(u[:, :r] * s[:r], bits)
    right, rsize = quantise(vh[:r], bits)
    return (left @ right).to(delta.dtype), lsize + rsize, kept


class Graft(Part):
    name = "graft"

    def __init__(self, config: GraftConfig):
        self.config = config
        self.start: StageStart | None = None
        self.notes: dict = {}

    def prepare(self, model, ctx: StageContext):
        self.start = StageStart(model)
        return model

    def finish(self, model, ctx: StageContext):
        if self.start is None:
            return model
        size = dense = 0
        energy = []
        with torch.no_grad():
            for p in model.parameters():
                theta_start = self.start.get(p)
                if theta_start is None:
                    continue
                delta, nbytes, kept = compress(p - theta_start, self.config.rank, self.config.bits)
                p.copy_(theta_start + delta)
                size, dense = size + nbytes, dense + p.numel() * 4
                if p.dim() == 2:
                    energy.append(kept)
        self.start = None  # free the copy
        self.notes = {"graft_bytes": size, "graft_dense_bytes": dense,
                      "graft_energy": round(sum(energy) / len(energy), 4) if energy else 1.0}
        return model

    def row_notes(self) -> dict:
        return dict(self.notes)


register_part("graft", GraftConfig, Graft, "knowledge grafting (GraftLLM-style): the stage's update kept only as a compressed delta, rank-r per matrix with quantised factors, grafted onto the stage-start weights")
