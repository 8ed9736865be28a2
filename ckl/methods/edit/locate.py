"""Causal tracing: which layer, at which token, carries a fact (Meng et al. 2022, Sec. 2).

For each fact (a statement prompt and its object) three kinds of run are compared, all
in one batch per fact:

- clean: the prompt as is; p_clean = P(object | prompt), every object token included;
- corrupted: Gaussian noise (std = `noise` x the standard deviation of the embedding
  matrix) added to the subject's token embeddings; p_corrupt;
- restored: corrupted, except that one hidden state (a block's output, or its MLP's
  output) at one token is set back to its clean value; p_restored.

The indirect effect of that state is p_restored - p_corrupt, averaged over `samples`
noise draws and over the facts the model knows (p_clean > p_corrupt). Restoring a block's
output at the prompt's last token of the last layer recovers p_clean exactly; a state
that carries the fact recovers much of it earlier. `trace` reports, per layer, the
effect of restoring the block output at the subject's first and last token, the block
output at the prompt's last token, and the MLP output at the subject's last token (where
ROME and MEMIT write). Small models trained from scratch may key a person on the first
name rather than the subject's last token; the table shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ckl.methods.edit._keys import _first
from ckl.model.layers import blocks, mlp_output_projection, token_view
from ckl.methods.edit._prompts import Row, encode
from ckl.data.facts import Fact, Relation
from ckl.data.stream import pick

SITES = ("subject_first", "subject_last", "prompt_last", "mlp_subject_last")


@dataclass
class TraceResult:
    layers: int
    facts: int  # facts traced
    known: int  # of which the model knows (p_clean > p_corrupt): the averages are over these
    p_clean: float
    p_corrupt: float
    effect: dict[str, list[float]]  # site -> per-layer mean indirect effect


def _subject_span(tokenizer, prompt_head: str, subject: str) -> tuple[int, int]:
    """Token span [start, end) of the subject inside the tokenised head."""
    before = prompt_head[: len(prompt_head) - len(subject)].rstrip()
    start = len(tokenizer(before, add_special_tokens=False)["input_ids"]) if before else 0
    return start, len(tokenizer(prompt_head, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def trace_fact(model: nn.Module, tokenizer, fact: Fact, relation: Relation, samples: int = 4, noise: float = 3.0, seed: int = 0, positions: Sequence[int] | None = None) -> dict:
    """Causal trace of one fact. Rows: clean, then `samples` x (corrupted, then one
    restored row per (site, layer)). Returns p_clean, p_corrupt and the effects, plus the
    effect of restoring the block output at each token position of the first layer
    (`by_position`, for checking which token matters).
    """
    device = next(model.parameters()).device
    template = relation.probe_template or pick(relation.templates, "statement", fact.id)
    batch = encode(tokenizer, [Row("", template, fact.subject, fact.object, 0)]).to(device)
    head = template.split("{subject}", 1)[0] + fact.subject
    s0, s1 = _subject_span(tokenizer, head, fact.subject)
    subj, last = int(batch.subject_pos[0]), int(batch.last_pos[0])
    stack = blocks(model)
    L = len(stack)
    T = batch.input_ids.shape[1]
    positions = list(range(last + 1)) if positions is None else list(positions)
    # restore plan: (kind, layer, position); kind 0 = block output, 1 = MLP output
    plan = [(0, l, s0) for l in range(L)] + [(0, l, subj) for l in range(L)] + [(0, l, last) for l in range(L)] + [(1, l, subj) for l in range(L)]
    plan += [(0, 0, p) for p in positions]
    per_sample = 1 + len(plan)
    B = 1 + samples * per_sample
    ids = batch.input_ids.expand(B, T)
    mask = batch.attention_mask.expand(B, T)

    embed = model.get_input_embeddings()
    gen = torch.Generator().manual_seed(seed)
    sigma = float(embed.weight.float().std())
    eps = torch.randn(samples, s1 - s0, embed.weight.shape[1], generator=gen) * noise * sigma
    eps = eps.repeat_interleave(per_sample, dim=0).to(device)  # (B-1, span, d)

    # clean pass: every block and MLP output
    clean_block, clean_mlp = {}, {}
    mlps = [mlp_output_projection(model, l) for l in range(L)]
    handles = [stack[l].register_forward_hook(lambda m, a, o, l=l: clean_block.__setitem__(l, _first(o)[0].clone())) for l in range(L)]
    handles += [mlps[l].register_forward_hook(lambda m, a, o, l=l: clean_mlp.__setitem__(l, token_view(_first(o), batch.input_ids.shape[1])[0].clone())) for l in range(L)]
    try:
        model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for h in handles:
            h.remove()

    restore: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for s in range(samples):
        for j, (kind, layer, pos) in enumerate(plan):
            rows, cols = restore.setdefault((kind, layer), ([], []))
            rows.append(1 + s * per_sample + 1 + j)
            cols.append(pos)

    def corrupt(module, args, output):
        out = output.clone()
        out[1:, s0:s1] += eps.to(out.dtype)
        return out

    def restorer(kind: int, layer: int):
        rows, cols = (torch.tensor(x, device=device) for x in restore.get((kind, layer), ([], [])))
        source = clean_block[layer] if kind == 0 else clean_mlp[layer]

        def hook(module, args, output):
            if not len(rows):
                return output
            flat = _first(output)
            out = token_view(flat, ids.shape[1]).clone()  # OPT's MLP sees (batch * tokens, d)
            out[rows, cols] = source[cols].to(out.dtype)
            out = out.reshape(flat.shape)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return hook

    handles = [embed.register_forward_hook(corrupt)]
    handles += [stack[l].register_forward_hook(restorer(0, l)) for l in range(L)]
    handles += [mlps[l].register_forward_hook(restorer(1, l)) for l in range(L)]
    try:
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    n_t = int(batch.target_mask[0].sum())
    t_pos = last + torch.arange(n_t, device=device)
    logits = model.get_output_embeddings()(hidden[:, t_pos])  # (B, n_t, V)
    lp = torch.log_softmax(logits.float(), -1).gather(-1, batch.target_ids[0, :n_t].expand(B, n_t)[..., None]).squeeze(-1)
    p = lp.sum(1).exp().cpu()  # (B,)
    p_clean = float(p[0])
    grid = p[1:].view(samples, per_sample)
    p_corrupt = float(grid[:, 0].mean())
    restored = grid[:, 1:].mean(0) - p_corrupt  # (len(plan),)
    effect = {site: restored[i * L : (i + 1) * L].tolist() for i, site in enumerate(SITES)}
    by_position = dict(zip(positions, restored[len(SITES) * L :].tolist()))
    return {"p_clean": p_clean, "p_corrupt": p_corrupt, "effect": effect, "by_position": by_position, "subject_span": (s0, s1), "subject_last": subj, "prompt_last": last}


def trace(model: nn.Module, tokenizer, facts: Sequence[Fact], relations: dict[str, Relation], samples: int = 4, noise: float = 3.0, seed: int = 0, progress=None) -> TraceResult:
    """Average causal traces over `facts` (only those the model knows count)."""
    L = len(blocks(model))
    sums = {site: [0.0] * L for site in SITES}
    known, pc, pk = 0, 0.0, 0.0
    for i, fact in enumerate(facts):
        one = trace_fact(model, tokenizer, fact, relations[fact.relation], samples, noise, seed + i)
        if progress:
            progress(i + 1, len(facts))
        if one["p_clean"] <= one["p_corrupt"]:
            continue
        known += 1
        pc += one["p_clean"]
        pk += one["p_corrupt"]
        for site in SITES:
            sums[site] = [a + b for a, b in zip(sums[site], one["effect"][site])]
    k = max(known, 1)
    return TraceResult(L, len(facts), known, pc / k, pk / k, {site: [v / k for v in vals] for site, vals in sums.items()})


def locate_table(model_dir, stream_dir, facts: int = 20, samples: int = 4, noise: float = 3.0, seed: int = 0):
    """What `ckl locate` prints: (TraceResult, rich Table) over the first `facts`
    invariant base facts of the stream (a deterministic sample).

    Raises:
        InputError: bad model or stream directory, or `facts` < 1.
    """
    import random

    from rich.table import Table

    from ckl.model import lm
    from ckl.core.errors import InputError
    from ckl.data.stream import Stream

    if facts < 1:
        raise InputError("<options>", None, "facts", f"must be >= 1, got {facts}")
    stream = Stream.load(stream_dir)
    model, tokenizer = lm.load(model_dir)
    pool = stream.invariant() or list(stream.base)
    chosen = random.Random(f"ckl.locate/{seed}").sample(pool, min(facts, len(pool)))
    result = trace(model, tokenizer, chosen, stream.relations, samples=samples, noise=noise, seed=seed)
    table = Table(title=f"causal trace: {result.known}/{result.facts} facts known; p(object) clean {result.p_clean:.3f}, subject corrupted {result.p_corrupt:.3f}", header_style="bold")
    table.add_column("layer", justify="right")
    headers = {"subject_first": "subject first token", "subject_last": "subject last token", "prompt_last": "prompt last token", "mlp_subject_last": "MLP at subject last (ROME/MEMIT)"}
    for site in SITES:
        table.add_column(headers[site], justify="right")
    for layer in range(result.layers):
        table.add_row(str(layer), *(f"{result.effect[site][layer]:+.3f}" for site in SITES))
    return result, table
