"""Per-weight statistics of the next-token loss's gradient over a set of documents, the
estimate behind EWC's diagonal Fisher (squared gradients) and the element-wise
importance of `ckl.methods.penalty.importance` (|weight * gradient|).

Written here rather than taken from a library: Avalanche and similar estimate Fisher
inside their own training strategies, not on a Hugging Face model and a list of texts,
and none covers the data-parallel sum ckl needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ckl.methods.penalty.l2 import base_parameters
from ckl.train.batching import pack

BLOCK = 128  # tokens per packed block when estimating (the documents are short)

Statistic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (weight, gradient) -> per-element value


def gradient_statistic(model, tokenizer, documents: list[str], batch_size: int, statistic: Statistic, accelerator=None) -> dict[str, torch.Tensor]:
    """Mean over batches of `statistic(weight, gradient of the batch's mean next-token
    loss)`, for every weight of the underlying model (adapters excluded), in eval mode
    (no dropout: the model as it predicts).

    Args:
        documents: training text, the same on every process.
        accelerator: when it has several processes, each takes every world-th batch and
            the sums are added across processes, so every process holds the same estimate.

    Returns:
        CPU float32 tensors by canonical parameter name.
    """
    params = base_parameters(model)
    names = list(params)
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    device = next(iter(params.values())).device
    total = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params.items()}
    starts = list(range(0, len(documents), batch_size))
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        for start in starts[rank::world]:
            input_ids, mask, labels = pack(tokenizer, documents[start : start + batch_size], BLOCK)
            loss = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    total[n] += statistic(params[n].detach(), g.detach()).float()
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    for n in names:
        if world > 1:
            total[n] = accelerator.reduce(total[n], reduction="sum")
        total[n] /= max(len(starts), 1)
    return {n: t.cpu() for n, t in total.items()}
