"""CollabEdit: several parties edit one model, each with its own requests, merged without
destroying each other's edits (Zheng et al. 2024, "CollabEdit: Towards Non-destructive
Collaborative Knowledge Editing").

A stage's edit requests are split among `parties` (contiguous shares, in stream order).
Each party finds its own edits' target hidden states (MEMIT's value step, on the model
they all start from) and, layer by layer, its keys K_p and residuals R_p. MEMIT's update
needs only the sums K^T K and K^T R, so each party shares its K_p^T K_p and K_p^T R_p
(not its requests) and the merge solves

    Delta = (sum_p K_p^T R_p)^T (lambda C + sum_p K_p^T K_p)^-1

for each layer, bottom to top, the parties recomputing their keys and residuals on the
merged model after each layer. That is MEMIT on all the requests at once (the paper's
"global editing" upper bound), reached without pooling them:
tests/methods/edit/test_collab_edit.py checks the equality to float tolerance.

`merge` chooses the merge: `collab` as above; `sum` and `average`, the naive merges the
paper compares with: every party runs MEMIT alone on the shared starting model and the
weight changes are added, or averaged. Summing counts the covariance term once per
party and lets the parties' updates interfere; averaging shrinks every party's edits by
1 / parties.

Deviations: the paper also handles conflicting and overlapping requests between parties
and runs on 6B-scale models; here the parties' requests are whatever the stream's stage
holds (a subject edited by two parties is resolved by the shared least squares), and the
parties live in one process (what they would send each other is the two sums per layer).
Everything else (layers, keys, covariance, values) is `ckl.methods.edit.memit`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_count
from ckl.methods.base import register_method
from ckl.methods.edit._requests import EDIT_KINDS, edit_batches, prefix_pool
from ckl.methods.edit._values import optimize_values
from ckl.methods.edit.memit import Memit, MemitConfig, update_from_sums
from ckl.model.layers import add_update, blocks, mlp_output_projection

MERGES = ("collab", "sum", "average")


@dataclass
class CollabEditConfig(MemitConfig):
    parties: int = field(default=3, metadata={"help": "parties the stage's edit requests are split among (contiguous shares)"})
    merge: str = field(default="collab", metadata={"help": "collab: merge the parties' key and residual sums (= MEMIT on all requests); sum / average: add or average the weight changes of MEMIT run by each party alone"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count(self.parties, "parties")
        if self.merge not in MERGES:
            raise ConfigError("merge", f"merge must be one of {', '.join(MERGES)}, got {self.merge!r}")


def shares(records: list, parties: int) -> list[list]:
    """`records` in `parties` contiguous shares of near-equal size (empty ones dropped)."""
    size, extra = divmod(len(records), parties)
    out, begin = [], 0
    for p in range(parties):
        end = begin + size + (p < extra)
        if end > begin:
            out.append(records[begin:end])
        begin = end
    return out


class CollabEdit(Memit):
    """MEMIT by several parties, merged (`merge`)."""

    def __init__(self, config: CollabEditConfig):
        super().__init__(config)
        self.name = "collab_edit"

    def _edit_batch(self, model, records, layers: list[int], ctx) -> int:
        groups = shares(list(records), self.config.parties)
        if self.config.merge == "collab":
            return self._collaborative(model, groups, layers, ctx)
        return self._naive(model, groups, layers, ctx)

    def _collaborative(self, model, groups: list[list], layers: list[int], ctx) -> int:
        moments = [self.statistics.get(model, ctx.tokenizer, layer, ctx) for layer in layers]
        pool = prefix_pool(ctx.general_text, ctx.base, ctx.relations)
        z_block = blocks(model)[layers[-1]]
        parties, steps = [], 0
        for group in groups:  # each party's own edits: its prompts and its target hidden states
            batches = edit_batches(ctx.tokenizer, group, ctx.relations, pool, self.config.prefixes, self.config.essence_prompt, ctx.seed, self.config.subject_token)
            targets = optimize_values(model, z_block, batches.rewrite, self.config.settings(), essence=batches.essence)
            parties.append((batches.rewrite, targets.values))
            steps += targets.steps
        for i, (layer, moment) in enumerate(zip(layers, moments)):
            module = mlp_output_projection(model, layer)
            kk = kr = None
            for rewrite, values in parties:  # what each party shares: two sums, not its requests
                keys, residual = self.keys_and_residual(model, rewrite, values, module, z_block, len(layers) - i)
                keys, residual = keys.double(), residual.double().to(keys.device)
                kk = keys.T @ keys if kk is None else kk + keys.T @ keys  # (in, in)
                kr = keys.T @ residual if kr is None else kr + keys.T @ residual  # (in, d)
            add_update(module, update_from_sums(moment, kk, kr, self.config.covariance_weight))
        return steps

    def _naive(self, model, groups: list[list], layers: list[int], ctx) -> int:
        modules = [mlp_output_projection(model, layer) for layer in layers]
        start = [m.weight.detach().clone() for m in modules]
        total = [torch.zeros_like(w) for w in start]
        steps = 0
        for group in groups:  # each party alone, from the shared starting weights
            steps += super()._edit_batch(model, group, layers, ctx)
            with torch.no_grad():
                for m, w0, acc in zip(modules, start, total):
                    acc += m.weight - w0
                    m.weight.copy_(w0)
        scale = 1.0 if self.config.merge == "sum" else 1.0 / max(1, len(groups))
        with torch.no_grad():
            for m, w0, acc in zip(modules, start, total):
                m.weight.copy_(w0 + scale * acc)
        return steps


register_method("collab_edit", CollabEditConfig, CollabEdit, "CollabEdit: MEMIT by several parties, merged through their key/residual sums (= global MEMIT), or naively summed / averaged (Zheng et al. 2024)", kinds=EDIT_KINDS)
