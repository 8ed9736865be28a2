"""GEM: gradient episodic memory, one constraint per earlier cohort (Lopez-Paz & Ranzato
2017, "Gradient Episodic Memory for Continual Learning").

Cohorts play the paper's tasks: cohort 0 is the base knowledge, cohort j the facts taught
in stage j. Each cohort has its own memory (a reservoir buffer of facts, kept true: an
updated or edited fact leaves its old cohort for the stage that taught its new object, a
forgotten fact is dropped). Each step, after backward, the part computes one memory
gradient g_k per cohort (mean next-token loss on `memory_batch` blocks of that cohort's
documents; facts the stage changes left out) and, if any constraint is violated
(g . g_k < 0), replaces g by g~ = g + G^T v, where v solves the paper's dual QP

    min_v 1/2 v^T (G G^T) v + (G g)^T v   subject to  v >= margin

(G has the g_k as rows; `margin` is the paper's "memory strength", the lower bound on v
in the authors' code; margin 0 is the exact projection onto {z : G z >= 0}). At the
optimum every constraint holds: g~ . g_k = (G G^T v + G g)_k >= 0.

The QP is solved exactly by `solve_dual` (Lawson-Hanson non-negative least squares on the
Gram matrix), hand-written in torch rather than taken from quadprog / cvxpy: it has at
most T+1 variables, and no solver package can then be missing at run time.

Deviations and notes: memory gradients are taken in eval mode with `torch.autograd.grad`
on the unwrapped model, averaged over processes under data parallelism (see
`ckl.methods.gradient.agem`, whose helpers this part shares); the dual is solved in float64.
Cost: one extra forward and backward per cohort per step, and T+2 flattened gradient
copies. FSDP is not supported. With margin > 0 the projection is not scale-invariant, so
under fp16 loss scaling margin should be 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_number
from ckl.data.facts import Fact, fact_row
from ckl.methods.gradient.agem import flat_grad, memory_batch, memory_gradient, set_flat_grad, trainable
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.data.replay import ReservoirBuffer
from ckl.data.stream import Change
from ckl.train.loop import rng_for


@dataclass
class GemConfig:
    memory_per_cohort: int = field(default=256, metadata={"help": "most facts each cohort's memory holds (reservoir sampling)"})
    memory_batch: int = field(default=2, metadata={"help": "packed blocks of a cohort's memory documents per memory gradient"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed memory block"})
    margin: float = field(default=0.5, metadata={"help": "memory strength: lower bound on the dual variables (0 = exact projection); the paper's default is 0.5"})

    def __post_init__(self) -> None:
        for name in ("memory_per_cohort", "memory_batch", "block_size"):
            check_count(getattr(self, name), name)
        check_number(self.margin, "margin", low=0)


def solve_dual(gram: torch.Tensor, linear: torch.Tensor, margin: float = 0.0, tol: float = 1e-12) -> torch.Tensor:
    """Exactly solve min_v 1/2 v^T gram v + linear^T v subject to v >= margin.

    With u = v - margin this is min_u 1/2 u^T M u + (M margin + linear)^T u, u >= 0, and for
    M = G G^T that is the non-negative least-squares problem min_u ||G^T u + c||^2; it
    is solved by Lawson and Hanson's active-set algorithm (1974, ch. 23) written on the
    Gram matrix, which terminates with the exact optimum after finitely many steps.

    Args:
        gram: (K, K) symmetric positive semi-definite matrix.
        linear: (K,) vector.

    Returns:
        v (K,), float64, every entry >= margin.
    """
    M = gram.detach().double().cpu()  # (K, K); tiny, and gelsd runs on the CPU only
    M = 0.5 * (M + M.T)
    linear = linear.detach().double().cpu()
    b = linear + M @ torch.full_like(linear, float(margin))  # (K,)
    k = b.numel()
    scale = max(float(M.abs().max()), float(b.abs().max()), 1.0)
    eps = tol * scale
    u = torch.zeros(k, dtype=torch.float64, device=M.device)
    passive = torch.zeros(k, dtype=torch.bool)
    stuck = torch.zeros(k, dtype=torch.bool)  # entered and left at once: round-off, not a descent

    def solve_passive() -> torch.Tensor:
        s = torch.zeros_like(u)
        idx = passive.nonzero().flatten()
        # least squares, so a singular block (duplicate constraints) still has a solution
        s[idx] = torch.linalg.lstsq(M[idx][:, idx], -b[idx].unsqueeze(1), driver="gelsd").solution.flatten()
        return s

    for _ in range(30 * max(k, 1)):
        w = -(M @ u + b)  # minus the objective's gradient
        free = ~passive & ~stuck
        if not free.any() or float(w[free].max()) <= eps:
            break
        j = int(torch.where(free, w, torch.full_like(w, -float("inf"))).argmax())
        passive[j] = True
        while True:
            s = solve_passive()
            if bool((s[passive] > eps).all()):
                u = s
                break
            blocking = passive & (s <= eps)
            alpha = float((u[blocking] / (u[blocking] - s[blocking]).clamp_min(1e-300)).min())
            u = u + alpha * (s - u)
            passive &= u > eps
            u = torch.where(passive, u, torch.zeros_like(u))
            if not passive[j]:
                stuck[j] = True
            if not passive.any():
                break
    else:  # pragma: no cover - Lawson-Hanson terminates; this guards against round-off cycling
        raise RuntimeError("GEM dual solver did not converge")
    return (u + margin).to(gram.device)


def project_gem(g: torch.Tensor, G: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """GEM's projection of g (P,) against the memory gradients G (K, P): g unchanged when no
    constraint is violated, else g + G^T v with v the dual solution."""
    dots = G @ g  # (K,)
    if bool((dots >= 0).all()):
        return g
    Gd = G.double()
    v = solve_dual(Gd @ Gd.T, Gd @ g.double(), margin)
    return (g.double() + Gd.T @ v).to(g.dtype)


class Gem(Part):
    name = "gem"

    def __init__(self, config: GemConfig):
        self.config = config
        self.cohorts: dict[int, ReservoirBuffer] = {}  # cohort (stage taught) -> its memory
        self.ctx: StageContext | None = None
        self.projected = 0  # steps of the current stage whose gradient was projected

    def _ensure(self, ctx: StageContext) -> dict[int, ReservoirBuffer]:
        if not self.cohorts:
            buffer = ReservoirBuffer(self.config.memory_per_cohort)
            rng = rng_for(ctx.seed, "gem", 0)
            for fact in ctx.base:
                buffer.add(fact, rng)
            self.cohorts = {0: buffer}
        return self.cohorts

    def prepare(self, model, ctx: StageContext):
        self.ctx = ctx
        self.projected = 0
        self._ensure(ctx)
        return model

    def memory_batches(self, step: int) -> list[dict]:
        """One memory batch per cohort with facts left to constrain, for step `step`."""
        ctx = self.ctx
        busy = ctx.change.touched() if ctx.change else set()
        out = []
        for cohort, buffer in sorted(self._ensure(ctx).items()):
            facts = [f for f in buffer.facts if f.id not in busy]
            batch = memory_batch(facts, ctx, rng_for(ctx.seed, "gem", ctx.stage, step, cohort), self.config.memory_batch, self.config.block_size)
            if batch is not None:
                out.append(batch)
        return out

    def filter_gradients(self, model, step: int) -> None:
        if self.ctx is None:
            return
        batches = self.memory_batches(step)
        if not batches:
            return
        params = trainable(model)
        G = torch.stack([memory_gradient(model, b, params, self.ctx.accelerator) for b in batches])  # (K, P)
        g = flat_grad(params)
        projected = project_gem(g, G, self.config.margin)
        if projected is not g:
            set_flat_grad(params, projected)
            self.projected += 1

    def finish(self, model, ctx: StageContext):
        self.ctx = None
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        cohorts = self._ensure(ctx)
        stale = {r.fact.id for r in list(change.update) + list(change.edit)} | {f.id for f in change.forget}
        for buffer in cohorts.values():
            for fact_id in stale:
                buffer.remove(fact_id)
        taught = change.taught()
        if taught:
            buffer = cohorts.setdefault(change.stage, ReservoirBuffer(self.config.memory_per_cohort))
            rng = rng_for(ctx.seed, "gem", change.stage)
            for fact in taught:
                buffer.add(fact, rng)

    def state_dict(self) -> dict:
        return {str(c): {"facts": [fact_row(f) for f in b.facts], "seen": b.seen} for c, b in self.cohorts.items()}

    def load_state_dict(self, state: dict) -> None:
        self.cohorts = {}
        for cohort, row in state.items():
            buffer = ReservoirBuffer(self.config.memory_per_cohort)
            buffer.facts = [Fact(**r) for r in row["facts"]]
            buffer.seen = row["seen"]
            self.cohorts[int(cohort)] = buffer


register_part("gem", GemConfig, Gem, "GEM: solve a small QP each step so the gradient raises no earlier cohort's memory loss")
