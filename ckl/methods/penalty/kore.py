"""KORE's constraint: keep every update of a block matrix in the null space of the old
knowledge's inputs to it (KORE, "knowledge-oriented" injection with a null-space
constraint on the old knowledge's covariance; the projection is Adam-NSCL's, Wang et al.
2021, "Training Networks in Null Space of Feature Covariance for Continual Learning").

Before stage 1 the input of every linear map inside the transformer blocks is collected
on documents of the base knowledge K0 (forward hooks, no gradients): C = sum x x^T per
map. Its eigenvectors covering `energy` of the eigenvalue sum span the inputs the old
knowledge uses; Q = I - U U^T projects onto the rest. After every optimiser step (the
loop's `after_step` hook) each matrix's update is projected, W <- W_prev + (W - W_prev) Q
(inputs on the right, as nn.Linear stores W; transposed for GPT-2's Conv1D), so the map's
output on the old inputs changes only by the energy left out.
tests/methods/penalty/test_kore.py measures it: the projected maps' outputs on K0's inputs
move a small fraction of what plain fine-tuning moves them. After each stage the facts it
taught add their inputs to C (what was learned is kept too).

The update, not the gradient, is projected: Adam rescales every element of the gradient
by its own running size, so a projected gradient does not give a projected step (the same
reason Adam-NSCL projects the update). Embeddings, norms and biases train freely.

Deviations: KORE also augments the new knowledge into many training forms (compose with
`knowledge_instruct` for that half: `knowledge_instruct+kore`) and takes its covariance on
the model's general data; here C comes from K0's and the stages' fact documents, and the
null space is chosen by an energy threshold. Refused with adapter scopes (they leave the
base matrices frozen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.stream import Change, render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.penalty.l2 import base_parameters, canonical_name
from ckl.methods.scope._base import ScopePart
from ckl.model.layers import is_transposed, parameter_depths
from ckl.train.batching import pack
from ckl.train.loop import rng_for


@dataclass
class KoreConfig:
    energy: float = field(default=0.99, metadata={"help": "share of the old inputs' covariance (eigenvalue sum) kept out of the update's reach, in (0, 1)"})
    samples: int = field(default=256, metadata={"help": "most documents whose inputs form the covariance, each time"})
    batch_size: int = field(default=16, metadata={"help": "packed blocks per forward pass when collecting inputs"})

    def __post_init__(self) -> None:
        check_number(self.energy, "energy", low=0, low_open=True, high=1)
        if self.energy == 1:
            raise ConfigError("energy", "energy must be below 1: at 1 the null space is empty and nothing could train")
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


def null_projector(cov: torch.Tensor, energy: float) -> torch.Tensor:
    """I - U U^T, U the eigenvectors of `cov` whose eigenvalues (largest first) make up
    `energy` of their sum."""
    values, vectors = torch.linalg.eigh(cov.double())  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    total = float(values.sum())
    if total <= 0:
        return torch.eye(cov.shape[0])
    k = int(torch.searchsorted(torch.cumsum(values, 0) / total, torch.tensor(energy, dtype=values.dtype)).item()) + 1
    u = vectors[:, : min(k, cov.shape[0])]
    return (torch.eye(cov.shape[0], dtype=torch.float64) - u @ u.T).float()


class Kore(ScopePart):
    name = "kore"
    incompatible = frozenset({"lora", "olora", "loramoe", "kadapter", "expansion"})

    def __init__(self, config: KoreConfig):
        self.config = config
        self.cov: dict[str, torch.Tensor] = {}  # canonical weight name -> sum of x x^T of its inputs
        self.projectors: dict[str, torch.Tensor] = {}
        self.transposed: dict[str, bool] = {}
        self.prev: dict[str, torch.Tensor] | None = None
        self.frozen = []

    def _maps(self, model) -> dict[str, torch.nn.Module]:
        """Canonical weight name -> module, for every 2-D linear map inside the blocks."""
        depths, blocks = parameter_depths(model)
        out = {}
        for name, module in model.named_modules():
            w = getattr(module, "weight", None)
            if w is None or w.dim() != 2 or isinstance(module, torch.nn.Embedding):
                continue
            key = f"{name}.weight"
            if 0 <= depths.get(key, -1) < blocks:
                out[canonical_name(key)] = module
        return out

    @torch.no_grad()
    def _collect(self, model, facts, ctx: StageContext, label) -> None:
        rng = rng_for(ctx.seed, "kore", ctx.stage, label)
        docs = render_documents(facts, ctx.relations, rng, qa_subjects=ctx.qa_subjects)
        docs = rng.sample(docs, min(self.config.samples, len(docs)))
        if not docs:
            return
        maps = self._maps(model)
        hooks = []
        for name, module in maps.items():
            def grab(mod, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
                x = x[self._keep.reshape(-1)] if self._keep is not None else x
                c = x.T @ x
                self.cov[name] = self.cov[name] + c.cpu() if name in self.cov else c.cpu()
            hooks.append(module.register_forward_pre_hook(grab))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            input_ids, mask, _ = pack(ctx.tokenizer, docs, 128)
            for start in range(0, len(input_ids), self.config.batch_size):
                ids, m = input_ids[start : start + self.config.batch_size], mask[start : start + self.config.batch_size]
                self._keep = m.bool().to(device)  # padding positions are no inputs of the knowledge
                model(input_ids=ids.to(device), attention_mask=m.to(device))
        finally:
            self._keep = None
            for h in hooks:
                h.remove()
            model.train(was_training)
        self.projectors = {n: null_projector(c, self.config.energy) for n, c in self.cov.items()}

    _keep = None

    def prepare(self, model, ctx: StageContext):
        self.transposed = {n: is_transposed(m) for n, m in self._maps(model).items()}
        if not self.cov:
            self._collect(model, list(ctx.base), ctx, "base")
        self.prev = None
        return model

    def filter_gradients(self, model, step: int) -> None:
        params = base_parameters(model)  # the weights before this step, whose update is projected
        self.prev = {n: params[n].detach().clone() for n in self.projectors if n in params}

    def after_step(self, model, step: int) -> None:
        if self.prev is None:
            return
        params = base_parameters(model)
        with torch.no_grad():
            for name, prev in self.prev.items():
                p, q = params[name], self.projectors[name].to(params[name].device, params[name].dtype)
                delta = p - prev
                p.copy_(prev + (q @ delta if self.transposed[name] else delta @ q))  # Conv1D stores (in, out)
        self.prev = None

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        taught = change.taught()
        if taught:
            self._collect(model, taught, ctx, change.stage)

    def state_dict(self) -> dict:
        return {f"cov.{n}": c for n, c in self.cov.items()}

    def load_state_dict(self, state: dict) -> None:
        self.cov = {k[4:]: t for k, t in state.items() if k.startswith("cov.")}
        self.projectors = {n: null_projector(c, self.config.energy) for n, c in self.cov.items()}


register_part("kore", KoreConfig, Kore, "KORE's constraint: every block matrix's update projected into the null space of the old knowledge's inputs (Adam-NSCL's projection)")
