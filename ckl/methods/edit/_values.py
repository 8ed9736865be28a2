"""The one value optimiser of the editing core: the vector an edit writes into a module's
output so that the model gives the edit's new object. ROME's v*, MEMIT's z, GRACE's
codebook values and the key-value memory's residuals are all this optimisation, with
different settings; every edit of a batch is optimised at once.

For each edit g a vector p_g is written into the output of `module` at a position of every
row of g (the subject's last token by default; the prompt's last token for the memory
editors): added to the output (a residual: ROME, MEMIT, kv_memory) or replacing it
(GRACE). p_g starts at its anchor (0 for a residual, the module's output for a
replacement) and is optimised with Adam so that the model predicts g's new object after
each of g's prompts (the mean negative log-likelihood of its tokens, multi-token objects
included), while

- a KL term keeps the next-token distribution after "{subject} is a" where it was
  (the subject's "essence", Meng et al. 2022 Eq. 4; only when essence rows are given),
- a decay on the distance from the anchor, relative to v0 (the module's output at the
  bare prompt): ROME's `weight_decay * ||delta|| / ||v0||^2` (`decay="norm"`) or the L2
  form `weight_decay * ||delta||^2 / ||v0||^2` (`decay="squared"`), and
- a clamp ||delta|| <= clamp * ||v0|| (ROME; None for none)

keep the new value near the old one. An edit stops once its objective (`stop_on="loss"`:
NLL + KL + decay, ROME's rule) or its NLL alone (`stop_on="nll"`) is below `stop_loss`.

Adam is element-wise and rows of different edits never meet in a forward pass, so the
batched optimisation equals running each edit alone; a stopped edit's rows leave the
batch. Each step runs the active edits in chunks of about `chunk_rows` rows (edits of
similar prompt length together), accumulating gradients: memory stays bounded and a
chunk's activations stay in cache, which keeps the per-edit cost of a 1,000-edit batch at
that of a small one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace as replace_field

import torch
from torch import nn

from ckl.core.checks import ConfigError
from ckl.methods.edit._keys import _first, capture
from ckl.methods.edit._prompts import PromptBatch, concat
from ckl.model.layers import token_view


DECAYS = ("norm", "squared")
STOP_RULES = ("loss", "nll")


@dataclass
class ValueSettings:
    steps: int = 20
    lr: float = 0.5
    kl_weight: float = 0.0625
    weight_decay: float = 0.5
    clamp: float | None = 4.0  # ||delta|| <= clamp * ||v0||; None: no clamp
    stop_loss: float = 0.05
    decay: str = "norm"  # "norm": ROME's ||delta|| / ||v0||^2; "squared": ||delta||^2 / ||v0||^2
    stop_on: str = "loss"  # "loss": NLL + KL + decay below stop_loss (ROME); "nll": the NLL alone
    chunk_rows: int = 512  # rows per forward/backward pass; gradients of a step are accumulated over chunks

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ConfigError("decay", f"decay must be one of {DECAYS}, got {self.decay!r}")
        if self.stop_on not in STOP_RULES:
            raise ConfigError("stop_on", f"stop_on must be one of {STOP_RULES}, got {self.stop_on!r}")


@dataclass
class Values:
    values: torch.Tensor  # (G, d) what the module should output at each edit's bare prompt: v0 + delta, or the replacement
    initial: torch.Tensor  # (G, d) v0: the module's output at each edit's bare prompt
    delta: torch.Tensor  # (G, d) values - initial, as optimised (the residual a memory adds)
    loss: torch.Tensor  # (G,) final negative log-likelihood of each edit's object
    steps: int  # optimisation steps taken (over the whole batch)


def _logprobs_at(model: nn.Module, batch: PromptBatch, rows_pos: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Log-probabilities (N, V) at the (row, position) pairs, through the LM head only there."""
    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    logits = model.get_output_embeddings()(hidden[rows_pos])
    return torch.log_softmax(logits.float(), dim=-1)


def optimize_values(
    model: nn.Module, module: nn.Module, rewrite: PromptBatch, settings: ValueSettings,
    essence: PromptBatch | None = None, positions: torch.Tensor | None = None, replace: bool = False,
) -> Values:
    """Optimise one vector per edit (group) written into `module`'s output.

    Args:
        rewrite: rows with targets; each group's first row is its bare prompt.
        essence: one "{subject} is a"-style row per group for the KL term (same groups),
            written at its subject's position; None: no KL term.
        positions: (len(rewrite),) where each rewrite row is written; default its subject.
        replace: the vector replaces the output there (GRACE) instead of being added.
    """
    device = next(model.parameters()).device
    G = rewrite.n_groups
    if positions is not None:
        rewrite = replace_field(rewrite, subject_pos=positions.to(rewrite.subject_pos))
    (initial_all,) = capture(model, rewrite, [(module, "out")])
    initial = initial_all[rewrite.first_rows().cpu()].to(device)  # (G, d)
    anchor = initial.clone() if replace else torch.zeros_like(initial)
    param = anchor.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=settings.lr)
    max_norm = None if settings.clamp is None else settings.clamp * initial.norm(dim=1)  # (G,)
    base_sq = initial.pow(2).sum(1).clamp(min=1e-12) if settings.decay == "squared" else initial.norm(dim=1).pow(2).clamp(min=1e-12)

    # one batch: the rewrite rows, then the essence rows; one forward pass per chunk and step
    both = (concat(rewrite, essence) if essence is not None else rewrite).to(device)
    n_rewrite = len(rewrite)
    is_rewrite = torch.arange(len(both), device=device) < n_rewrite
    S = both.target_ids.shape[1]
    t_pos = both.last_pos[:, None] + torch.arange(S, device=device)[None, :]  # (B, S): last prompt token + j predicts target token j
    t_pos = torch.where(both.target_mask, t_pos, both.last_pos[:, None])
    essence_init = None
    if essence is not None:
        with torch.no_grad():
            ess = both.select(torch.arange(n_rewrite, len(both), device=device))
            essence_init = _logprobs_at(model, ess, (torch.arange(len(ess), device=device), ess.last_pos))  # (G', V)

    state: dict[str, torch.Tensor] = {}

    def write(mod, args, output):
        flat = _first(output)
        out = token_view(flat, state["width"])  # OPT's MLP sees (batch * tokens, d)
        rows, pos, group = state["rows"], state["pos"], state["group"]
        value = param[group].to(out.dtype)
        out = out.index_put((rows, pos), value if replace else out[rows, pos] + value).reshape(flat.shape)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    head = model.get_output_embeddings()
    rows_per_group = torch.bincount(both.group, minlength=G)  # (G,)
    width = torch.zeros(G, dtype=torch.long, device=device).scatter_reduce(0, both.group, both.attention_mask.sum(1), "amax")
    by_width = torch.argsort(width, stable=True)  # similar lengths share a chunk: little padding

    def chunk_loss(in_chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nll, kl), each (G,) and zero outside `in_chunk`, from one forward pass."""
        rows = torch.nonzero(in_chunk[both.group]).squeeze(1)  # rewrite rows first, then essence rows
        part, rw = both.select(rows), is_rewrite[rows]
        state.update(rows=torch.arange(len(part), device=device), pos=part.subject_pos, group=part.group, width=part.input_ids.shape[1])
        hidden = model.base_model(input_ids=part.input_ids, attention_mask=part.attention_mask).last_hidden_state

        r_idx = torch.nonzero(rw).squeeze(1)
        lp = torch.log_softmax(head(hidden[r_idx[:, None], t_pos[rows[r_idx]]]).float(), -1)  # (Br, S, V)
        tok_lp = lp.gather(-1, part.target_ids[r_idx][..., None]).squeeze(-1) * part.target_mask[r_idx]  # (Br, S)
        row_nll = -tok_lp.sum(1) / part.target_mask[r_idx].sum(1).clamp(min=1)  # (Br,)
        r_group = part.group[r_idx]
        nll = torch.zeros(G, device=device).index_add(0, r_group, row_nll)
        nll = nll / torch.bincount(r_group, minlength=G).clamp(min=1)
        kl = torch.zeros(G, device=device)
        if essence_init is not None:
            e_idx = torch.nonzero(~rw).squeeze(1)
            kl_lp = torch.log_softmax(head(hidden[e_idx, part.last_pos[e_idx]]).float(), -1)  # (Be, V)
            init = essence_init[rows[e_idx] - n_rewrite]
            kl_rows = (kl_lp.exp() * (kl_lp - init)).sum(-1)  # KL(edited || initial), per row
            kl = kl.index_add(0, part.group[e_idx], kl_rows)
        return nll, kl

    active = torch.ones(G, dtype=torch.bool, device=device)
    loss_g = torch.full((G,), float("inf"), device=device)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    handle = module.register_forward_hook(write)
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
                moved = param - anchor
                distance = moved.pow(2).sum(1) if settings.decay == "squared" else moved.norm(dim=1)
                total = nll + settings.kl_weight * kl + settings.weight_decay * distance / base_sq  # (G,)
                with torch.no_grad():
                    loss_g[in_chunk] = nll[in_chunk]
                    done = (total if settings.stop_on == "loss" else nll) < settings.stop_loss
                    active &= ~(in_chunk & done)  # converged edits keep their value
                (total * (in_chunk & active)).sum().backward()  # edits are independent: gradients add up exactly
            if not active.any():
                break
            before = param.detach().clone()
            optimizer.step()
            with torch.no_grad():  # Adam's momentum must not move a converged edit
                param.copy_(torch.where(active[:, None], param, before))
                if max_norm is not None:
                    moved = param - anchor
                    norms = moved.norm(dim=1)
                    param.copy_(anchor + moved * torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))[:, None])
    finally:
        handle.remove()
        for p in frozen:
            p.requires_grad_(True)
    found = param.detach()
    if replace:
        return Values(values=found, initial=initial, delta=found - initial, loss=loss_g.cpu(), steps=steps)
    return Values(values=initial + found, initial=initial, delta=found, loss=loss_g.cpu(), steps=steps)
