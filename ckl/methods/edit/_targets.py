"""The value a subject should map to: ROME's v* and MEMIT's z, all edits in one batch.

For each edit g a vector delta_g is added to the output of one module (ROME: the MLP
output projection of the edited layer; MEMIT: the last block of its layer range) at the
subject's last token of every row of g, and optimised with Adam so that the model
predicts g's new object after each of g's prompts (the mean negative log-likelihood of
its tokens, multi-token objects included), while

- a KL term keeps the next-token distribution after "{subject} is a" where it was
  (the subject's "essence", Meng et al. 2022 Eq. 4), and
- a weight decay on ||delta|| / ||v0||^2 and a clamp ||delta|| <= clamp * ||v0|| keep
  the new value near the old one (v0: the module's output at the bare prompt).

Adam is element-wise and rows of different edits never meet in a forward pass, so the
batched optimisation equals running each edit alone; an edit whose loss falls below
`stop_loss` stops (ROME's early stop) and its rows leave the batch. Each step runs the
active edits in chunks of about `chunk_rows` rows (edits of similar prompt length
together), accumulating gradients: memory stays bounded and a chunk's activations stay
in cache, which keeps the per-edit cost of a 1,000-edit batch at that of a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ckl.methods.edit._keys import _first, capture
from ckl.methods.edit._prompts import PromptBatch, concat


@dataclass
class TargetSettings:
    steps: int = 20
    lr: float = 0.5
    kl_weight: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 4.0
    stop_loss: float = 0.05
    chunk_rows: int = 512  # rows per forward/backward pass; gradients of a step are accumulated over chunks


@dataclass
class Targets:
    values: torch.Tensor  # (G, d) v0 + delta: the value each edit should produce
    initial: torch.Tensor  # (G, d) v0: the module's output at each edit's bare prompt
    loss: torch.Tensor  # (G,) final negative log-likelihood of each edit's object
    steps: int  # optimisation steps taken (over the whole batch)


def _logprobs_at(model: nn.Module, batch: PromptBatch, rows_pos: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Log-probabilities (N, V) at the (row, position) pairs, through the LM head only there."""
    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    logits = model.get_output_embeddings()(hidden[rows_pos])
    return torch.log_softmax(logits.float(), dim=-1)


def optimize_targets(
    model: nn.Module, module: nn.Module, rewrite: PromptBatch, essence: PromptBatch, settings: TargetSettings,
) -> Targets:
    """Optimise one delta per edit (group) at `module`'s output.

    Args:
        rewrite: rows with targets; each group's first row is its bare prompt.
        essence: one "{subject} is a"-style row per group, for the KL term (same groups).
    """
    device = next(model.parameters()).device
    G = rewrite.n_groups
    (initial_all,) = capture(model, rewrite, [(module, "out")])
    initial = initial_all[rewrite.first_rows().cpu()].to(device)  # (G, d)
    d = initial.shape[1]
    delta = torch.zeros(G, d, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    max_norm = settings.clamp * initial.norm(dim=1)  # (G,)
    base_sq = initial.norm(dim=1).pow(2).clamp(min=1e-12)

    # one batch: the rewrite rows, then the essence rows; one forward pass per step
    both = concat(rewrite, essence).to(device)
    n_rewrite = len(rewrite)
    is_rewrite = torch.arange(len(both), device=device) < n_rewrite
    S = both.target_ids.shape[1]
    t_pos = both.last_pos[:, None] + torch.arange(S, device=device)[None, :]  # (B, S): last prompt token + j predicts target token j
    t_pos = torch.where(both.target_mask, t_pos, both.last_pos[:, None])
    with torch.no_grad():
        ess = both.select(torch.arange(n_rewrite, len(both), device=device))
        essence_init = _logprobs_at(model, ess, (torch.arange(len(ess), device=device), ess.last_pos))  # (G', V)

    state: dict[str, torch.Tensor] = {}

    def add_delta(mod, args, output):
        out = _first(output)
        add = torch.zeros_like(out)
        add[state["rows"], state["pos"]] = delta[state["group"]].to(out.dtype)
        out = out + add
        return (out, *output[1:]) if isinstance(output, tuple) else out

    head = model.get_output_embeddings()
    rows_per_group = torch.bincount(both.group, minlength=G)  # (G,)
    width = torch.zeros(G, dtype=torch.long, device=device).scatter_reduce(0, both.group, both.attention_mask.sum(1), "amax")
    by_width = torch.argsort(width, stable=True)  # similar lengths share a chunk: little padding

    def chunk_loss(in_chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nll, kl), each (G,) and zero outside `in_chunk`, from one forward pass."""
        rows = torch.nonzero(in_chunk[both.group]).squeeze(1)  # rewrite rows first, then essence rows
        part, rw = both.select(rows), is_rewrite[rows]
        state.update(rows=torch.arange(len(part), device=device), pos=part.subject_pos, group=part.group)
        hidden = model.base_model(input_ids=part.input_ids, attention_mask=part.attention_mask).last_hidden_state

        r_idx = torch.nonzero(rw).squeeze(1)
        lp = torch.log_softmax(head(hidden[r_idx[:, None], t_pos[rows[r_idx]]]).float(), -1)  # (Br, S, V)
        tok_lp = lp.gather(-1, part.target_ids[r_idx][..., None]).squeeze(-1) * part.target_mask[r_idx]  # (Br, S)
        row_nll = -tok_lp.sum(1) / part.target_mask[r_idx].sum(1).clamp(min=1)  # (Br,)
        r_group = part.group[r_idx]
        nll = torch.zeros(G, device=device).index_add(0, r_group, row_nll)
        nll = nll / torch.bincount(r_group, minlength=G).clamp(min=1)

        e_idx = torch.nonzero(~rw).squeeze(1)
        kl_lp = torch.log_softmax(head(hidden[e_idx, part.last_pos[e_idx]]).float(), -1)  # (Be, V)
        init = essence_init[rows[e_idx] - n_rewrite]
        kl_rows = (kl_lp.exp() * (kl_lp - init)).sum(-1)  # KL(edited || initial), per row
        return nll, torch.zeros(G, device=device).index_add(0, part.group[e_idx], kl_rows)

    active = torch.ones(G, dtype=torch.bool, device=device)
    loss_g = torch.full((G,), float("inf"), device=device)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    handle = module.register_forward_hook(add_delta)
    steps = 0
    try:
        for _ in range(settings.steps):
            optimizer.zero_grad(set_to_none=True)
            order = by_width[active[by_width]]
            ends = torch.cumsum(rows_per_group[order], 0)
            chunk_of = (ends - 1) // settings.chunk_rows  # edits in chunks of about chunk_rows rows
            steps += 1
            for c in torch.unique(chunk_of):
                in_chunk = torch.zeros(G, dtype=torch.bool, device=device)
                in_chunk[order[chunk_of == c]] = True
                nll, kl = chunk_loss(in_chunk)
                decay = settings.weight_decay * delta.norm(dim=1) / base_sq
                total = nll + settings.kl_weight * kl + decay  # (G,)
                with torch.no_grad():
                    loss_g[in_chunk] = nll[in_chunk]
                    active &= ~(in_chunk & (total < settings.stop_loss))  # converged edits keep their delta
                (total * (in_chunk & active)).sum().backward()  # edits are independent: gradients add up exactly
            if not active.any():
                break
            before = delta.detach().clone()
            optimizer.step()
            with torch.no_grad():  # Adam's momentum must not move a converged edit
                delta.copy_(torch.where(active[:, None], delta, before))
                norms = delta.norm(dim=1)
                delta.mul_(torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))[:, None])
    finally:
        handle.remove()
        for p in frozen:
            p.requires_grad_(True)
    return Targets(values=(initial + delta.detach()), initial=initial, loss=loss_g.cpu(), steps=steps)
