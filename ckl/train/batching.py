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
    encoded = tokenizer(list(docs), add_special_tokens=False)["input_ids"] if docs else []  # a stage may have no text (only forget requests)
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
    read_only = input_only_ids(tokenizer)
    if read_only:
        labels = labels.masked_fill(torch.isin(input_ids, torch.tensor(read_only, dtype=torch.long)), IGNORE)
    return input_ids, mask, labels


def input_only_ids(tokenizer) -> list[int]:
    """Ids of the special tokens a method added to be read, never predicted (memory
    tokens, soft prompts: ckl.methods.retrieve.cmt): every added special token but the
    end-of-sequence, beginning, padding and unknown tokens. They are never a target."""
    own = {getattr(tokenizer, f"{k}_token_id", None) for k in ("eos", "bos", "pad", "unk")}
    return sorted(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special and i not in own)


def shard_batches(n: int, batch_size: int, rank: int, world: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batch indices of this rank, `batch_size` items per rank and step.

    The shuffled order is cut into global batches of `batch_size * world` items and rank
    r takes the r-th contiguous part of each, so step k of `world` processes sees exactly
    the items of step k of one process with `batch_size * world` (the same order: every
    rank draws it from the same seed). Every rank gets the same number of batches, since
    data-parallel ranks must step together; in a short last global batch a rank may get
    an empty tensor, and the training loop lets it step with a zero-weight stand-in.
    """
    order = torch.randperm(n, generator=generator)
    step = batch_size * world
    return [torch.tensor_split(order[i : i + step], world)[rank] for i in range(0, n, step)]
