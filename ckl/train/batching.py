"""Turning documents into packed token blocks.

Whole documents are packed greedily into blocks of `block_size` tokens, each document
followed by EOS, so that a short fact sentence is never cut in two (its object would
lose the prompt it completes); the tail of every block is padding that the loss ignores.
Only a document longer than a block is split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100


def pack(tokenizer, docs: Sequence[str], block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack documents into blocks.

    Returns:
        input_ids (N, L), attention_mask (N, L), labels (N, L) with IGNORE on padding.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    blocks: list[list[int]] = []
    current: list[int] = []
    for ids in encoded:
        ids = ids + [eos]
        while len(ids) > block_size:  # only over-long documents are split
            if current:
                blocks.append(current)
                current = []
            blocks.append(ids[:block_size])
            ids = ids[block_size:]
        if len(current) + len(ids) > block_size:
            blocks.append(current)
            current = []
        current = current + ids
    if current:
        blocks.append(current)
    width = max((len(b) for b in blocks), default=1)
    input_ids = torch.full((len(blocks), width), pad, dtype=torch.long)  # (N, L)
    mask = torch.zeros((len(blocks), width), dtype=torch.long)
    for i, b in enumerate(blocks):
        input_ids[i, : len(b)] = torch.tensor(b, dtype=torch.long)
        mask[i, : len(b)] = 1
    labels = input_ids.masked_fill(mask == 0, IGNORE)
    return input_ids, mask, labels


def shard_batches(n: int, batch_size: int, rank: int, world: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batch indices for this rank. Every rank gets the same number of batches
    (a short shard wraps around), because data-parallel ranks must step together."""
    order = torch.randperm(n, generator=generator)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if world == 1:
        return batches
    per_rank = -(-len(batches) // world)
    padded = [batches[i % len(batches)] for i in range(per_rank * world)]
    return padded[rank::world]
