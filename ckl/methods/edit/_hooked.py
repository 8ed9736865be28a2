"""Shared plumbing of the memory editors (GRACE, the gated key-value memory): the MLP a
memory sits on, its prompts, and a forward hook that survives checkpoint reloads.

A memory editor never changes a weight: it keeps its keys and values as tensors in its
state (saved as safetensors with the checkpoint) and acts through a forward hook on one
MLP. `attach` (re)installs the hook on whatever model object it is given, so the runner's
`restore(model)` after `lm.load` brings the memory back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ckl.data.facts import ChangeRecord, Relation
from ckl.methods.edit._prompts import PromptBatch, Row, encode
from ckl.model.layers import block_mlp


def edit_batch(tokenizer, records: Sequence[ChangeRecord], relations: dict[str, Relation]) -> PromptBatch:
    """One row per edit and training template of its relation, teaching the new object,
    encoded by the editing core's one encoder (`_prompts.encode`: subject head, the rest
    of the prompt and the object tokenised separately and concatenated, so the subject's
    last token is exactly the end of the head whatever the tokenizer)."""
    rows = [Row("", template, r.fact.subject, r.fact.object, g)
            for g, r in enumerate(records) for template in relations[r.fact.relation].templates]
    return encode(tokenizer, rows)


@torch.no_grad()
def read_mlp(model: nn.Module, mlp: nn.Module, batch: PromptBatch, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLP's input and output at `positions` of each row, (B, d) each, from one
    forward pass of the batch."""
    device = next(model.parameters()).device
    rows = torch.arange(len(batch), device=device)
    positions = positions.to(device)
    seen: dict[str, torch.Tensor] = {}

    def grab(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        seen["in"], seen["out"] = inputs[0][rows, positions].float(), out[rows, positions].float()

    handle = mlp.register_forward_hook(grab)
    try:
        model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device))
    finally:
        handle.remove()
    return seen["in"], seen["out"]


class Hook:
    """One forward hook `fn(module, inputs, output) -> output` on a model's MLP; `attach`
    moves it to another model (after a checkpoint reload), `detach` removes it."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.handle = None
        self.model_id: int | None = None

    def attach(self, model: nn.Module, layer: int) -> None:
        if self.handle is not None and self.model_id == id(model):
            return
        self.detach()
        self.handle = block_mlp(model, layer).register_forward_hook(self.fn)
        self.model_id = id(model)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle, self.model_id = None, None


def optimize_values(
    model: nn.Module, module: nn.Module, batch: PromptBatch, positions: torch.Tensor, init: torch.Tensor,
    replace: bool, steps: int, lr: float, decay: float, stop_loss: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One vector per edit (group), written into `module`'s output at `positions` of its
    rows (`replace`: the output becomes the vector, GRACE; else the vector is added,
    a residual, as in ROME's v* and NeuralDB's values), optimised with Adam, all edits in
    one batch, so that each row predicts its target tokens (mean NLL over the object's
    tokens, multi-token objects included) plus `decay * ||v - init||^2 / ||init||^2`
    (for residuals `init` is the module's output, the anchor is 0). Edits never meet in a
    forward pass and Adam is element-wise, so this equals editing one at a time; an edit
    whose NLL is below `stop_loss` is frozen.

    Returns:
        (values (G, d), final NLL per edit (G,)).
    """
    device = next(model.parameters()).device
    ids, attention = batch.input_ids.to(device), batch.attention_mask.to(device)
    target_ids, target_mask, group = batch.target_ids.to(device), batch.target_mask.to(device), batch.group.to(device)
    last_pos, positions = batch.last_pos.to(device), positions.to(device)
    G, B, S = batch.n_groups, len(batch), batch.target_ids.shape[1]
    init = init.to(device).float()
    scale = init.pow(2).sum(1).clamp(min=1e-12)
    anchor = init if replace else torch.zeros_like(init)
    values = anchor.clone().requires_grad_(True)
    rows = torch.arange(B, device=device)
    t_pos = last_pos[:, None] + torch.arange(S, device=device)[None, :]
    t_pos = torch.where(target_mask, t_pos, last_pos[:, None])
    counts = torch.bincount(group, minlength=G).clamp(min=1).float()

    def write(mod, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = values[group].to(out.dtype)
        new = new if replace else out[rows, positions] + new
        out = out.index_put((rows, positions), new)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    active = torch.ones(G, dtype=torch.bool, device=device)
    nll = torch.full((G,), float("inf"), device=device)
    optimizer = torch.optim.Adam([values], lr=lr)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    handle = module.register_forward_hook(write)
    try:
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=attention).logits
            logp = torch.log_softmax(logits[rows[:, None], t_pos].float(), dim=-1)
            tok = logp.gather(-1, target_ids[..., None]).squeeze(-1) * target_mask
            row_nll = -tok.sum(1) / target_mask.sum(1).clamp(min=1)
            nll_now = torch.zeros(G, device=device).index_add(0, group, row_nll) / counts
            with torch.no_grad():
                nll = torch.where(active, nll_now.detach(), nll)
                active &= nll_now >= stop_loss
            if not active.any():
                break
            loss = nll_now + decay * (values - anchor).pow(2).sum(1) / scale
            optimizer.zero_grad(set_to_none=True)
            (loss * active).sum().backward()
            before = values.detach().clone()
            optimizer.step()
            with torch.no_grad():  # a converged edit keeps its value
                values.copy_(torch.where(active[:, None], values, before))
    finally:
        handle.remove()
        for p in trainable:
            p.requires_grad_(True)
    return values.detach(), nll.detach()
