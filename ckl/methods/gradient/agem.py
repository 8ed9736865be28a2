"""A-GEM: project the gradient so that it never points against the memory's average gradient
(Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM").

Each step, after backward, the part computes the reference gradient g_ref of the mean
next-token loss on a batch of memory documents, and if the step's gradient g conflicts
with it (g . g_ref < 0) replaces g by

    g <- g - (g . g_ref / g_ref . g_ref) g_ref

over all trainable parameters, flattened. The projected step then leaves the memory loss
unchanged to first order; a step that does not conflict is left as it is.

The memory holds facts, not text (the `Replay` part's reservoir buffer: filled from the
base knowledge on first use, kept true under updates, forgets dropped, new facts added
by reservoir sampling after each stage). Facts the current stage changes are left out of
the memory batch, or the constraint would forbid the very update being taught.

Deviations and notes:
- The memory batch is `memory_batch` packed blocks of freshly rendered documents for a
  random sample of memory facts, drawn deterministically per (seed, stage, step).
- g_ref is taken in eval mode (no dropout), so it is the gradient of the memory loss
  itself; the paper uses the training-mode forward.
- g_ref is computed with `torch.autograd.grad` on the unwrapped model, which never
  touches the `.grad` buffers holding g: the save / zero / backward / restore of a
  second `.backward()` is not needed.
- Under data parallelism g_ref is averaged across processes (`accelerator.reduce`); g
  already is (DDP reduces it in backward). Every process draws the same memory batch.
  FSDP (sharded flat parameters) is not supported.
- The projection is scale-invariant, so it is also right on the loss-scaled gradients of
  fp16 mixed precision. It runs before the loop's gradient clipping.
- Cost: one extra forward and backward per step, and a few flattened copies of the
  trainable parameters' gradients.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count
from ckl.data.facts import Fact
from ckl.methods.base import Part, StageContext, register_part
from ckl.methods.data.replay import Replay, ReplayConfig
from ckl.data.stream import Change, render_documents
from ckl.train.batching import pack
from ckl.train.loop import rng_for

FACTS_PER_BLOCK = 8  # facts sampled per wanted memory block (a block holds a few biographies)


@dataclass
class AgemConfig:
    memory_size: int = field(default=1000, metadata={"help": "most facts the episodic memory holds (reservoir sampling)"})
    memory_batch: int = field(default=4, metadata={"help": "packed blocks of memory documents per reference gradient"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed memory block"})

    def __post_init__(self) -> None:
        for name in ("memory_size", "memory_batch", "block_size"):
            check_count(getattr(self, name), name)


# ------------------------------------------------------- shared with GEM (ckl.methods.gradient.gem)


def trainable(model) -> list[torch.nn.Parameter]:
    """The parameters training moves, in a fixed order (the flattening order)."""
    return [p for p in model.parameters() if p.requires_grad]


def flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """The current `.grad` of `params` as one float32 vector (zeros where absent)."""  # (P,)
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def set_flat_grad(params: Sequence[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Write a flat vector back into the parameters' `.grad`."""
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset : offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        offset += n


def memory_batch(facts: Sequence[Fact], ctx: StageContext, rng: random.Random, blocks: int, block_size: int) -> dict | None:
    """`blocks` packed blocks of training documents for a random sample of `facts`
    (None when there are no facts)."""
    if not facts:
        return None
    sample = rng.sample(list(facts), min(len(facts), blocks * FACTS_PER_BLOCK))
    documents = render_documents(sample, ctx.relations, rng, qa_subjects=ctx.qa_subjects)
    input_ids, mask, labels = pack(ctx.tokenizer, documents, block_size)
    chosen = sorted(rng.sample(range(len(input_ids)), min(blocks, len(input_ids))))
    return {"input_ids": input_ids[chosen], "attention_mask": mask[chosen], "labels": labels[chosen]}  # (B, L) each


def memory_gradient(model, batch: dict, params: Sequence[torch.nn.Parameter], accelerator=None) -> torch.Tensor:
    """Flat gradient (P,) of the mean next-token loss on `batch`, in eval mode, without
    touching `.grad`; averaged over processes under data parallelism."""
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    device = params[0].device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    finally:
        model.train(was_training)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])
    if accelerator is not None and accelerator.num_processes > 1:
        flat = accelerator.reduce(flat, reduction="mean")
    return flat


def project_agem(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection: g unchanged when g . g_ref >= 0, else its component along g_ref
    removed, so that the result is orthogonal to g_ref."""
    dot = torch.dot(g, g_ref)
    norm = torch.dot(g_ref, g_ref)
    if dot >= 0 or norm <= 0:
        return g
    return g - (dot / norm) * g_ref


# ----------------------------------------------------------------------------- the part


class Agem(Part):
    name = "agem"

    def __init__(self, config: AgemConfig):
        self.config = config
        # the reservoir memory and how it is kept true are Replay's; it never mixes facts in
        self.memory = Replay(ReplayConfig(fraction=0.0, buffer_size=config.memory_size))
        self.ctx: StageContext | None = None
        self.projected = 0  # steps of the current stage whose gradient was projected

    def prepare(self, model, ctx: StageContext):
        self.ctx = ctx
        self.projected = 0
        self.memory._ensure(ctx)
        return model

    def memory_batch(self, step: int) -> dict | None:
        """The memory batch of optimiser step `step` of the current stage."""
        ctx = self.ctx
        busy = ctx.change.touched() if ctx.change else set()
        facts = [f for f in self.memory._ensure(ctx).facts if f.id not in busy]
        rng = rng_for(ctx.seed, "agem", ctx.stage, step)
        return memory_batch(facts, ctx, rng, self.config.memory_batch, self.config.block_size)

    def reference_gradient(self, model, step: int) -> tuple[list[torch.nn.Parameter], torch.Tensor] | None:
        """The trainable parameters and the memory batch's flat gradient (P,) at this step,
        or None when there is no memory (outside a stage, or nothing held)."""
        if self.ctx is None:
            return None
        batch = self.memory_batch(step)
        if batch is None:
            return None
        params = trainable(model)
        return params, memory_gradient(model, batch, params, self.ctx.accelerator)

    def filter_gradients(self, model, step: int) -> None:
        reference = self.reference_gradient(model, step)
        if reference is None:
            return
        params, g_ref = reference
        g = flat_grad(params)
        projected = project_agem(g, g_ref)
        if projected is not g:
            set_flat_grad(params, projected)
            self.projected += 1

    def finish(self, model, ctx: StageContext):
        self.ctx = None
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        self.memory.observe(model, change, ctx)

    def state_dict(self) -> dict:
        return self.memory.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state)


register_part("agem", AgemConfig, Agem, "A-GEM: project each gradient so it never raises the loss on a memory of earlier facts")
