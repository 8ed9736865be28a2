"""MEMIT: Mass-Editing Memory in a Transformer (Meng, Sen Sharma, Andonian, Belinkov, Bau,
ICLR 2023).

All edits of a batch at once, spread over a range of MLP layers:

1. for every edit, a target hidden state z at the last layer of the range, at the
   subject's last token: the block's output plus a delta optimised exactly as ROME's
   value (`ckl.methods.edit._targets`), all edits in one batch;
2. for each layer l of the range, bottom to top: the keys K (the MLP output projection's
   input at each subject's last token, averaged over the edit's prompts) and the residual
   R = z - (current hidden state at the top layer), of which this layer takes the share
   R / (layers left); the least-squares update that writes it while keeping the other
   keys' values, Delta = R^T K (lambda C + K^T K)^-1 (the paper's Eq. 14), with C = E[k k^T]
   the layer's key second moment on the base model's training text (cached on disk).

Each edit's key is, as in the authors' code, the mean of its bare prompt's key and of the
mean of its context-prefixed prompts' keys (two equal halves). `per_prompt_keys: true`
instead fits every prompt's key to its edit's residual (a deviation, once the default
here): measured against the reference implementation on the default world's model (100
edits in one batch, docs/editing.md) it wrecks the model (efficacy 0.01, locality 0.11
where the reference's averaged keys give 0.41 / 0.49), because hundreds of per-prompt keys,
many of them shared first names, span the whole key space. Otherwise as in `ckl.methods.edit.rome` (context prefixes from the general
training text, every training template and question of the relation, C from the
stream's training text, solved without an explicit inverse). `update` records are
applied like edits. The weights carry every edit, so resuming needs no method state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_number
from ckl.methods.edit._covariance import KeyStatistics
from ckl.methods.edit._keys import capture, context_weighted_mean
from ckl.model.layers import add_update, blocks, mlp_output_projection, value_matrix
from ckl.methods.edit._requests import EDIT_KINDS, edit_batches, edit_records, prefix_pool
from ckl.methods.edit._values import optimize_values
from ckl.model.lm import count_parameters
from ckl.methods.base import ApplyStats, Method, StageContext, register_method
from ckl.methods.edit.rome import RomeConfig, default_layer
from ckl.data.stream import Change


@dataclass
class MemitConfig(RomeConfig):
    layers: list[int] = field(default_factory=list, metadata={"help": "edited layers, e.g. [1, 2]; [] = the `span` layers ending at ROME's default layer"})
    span: int = field(default=2, metadata={"help": "number of layers when `layers` is empty"})
    covariance_weight: float = field(default=1.0, metadata={"help": "lambda: weight of the key second moment C against the new keys (higher = smaller, more conservative updates)"})
    per_prompt_keys: bool = field(default=False, metadata={"help": "fit every prompt's key (True) or, as in the paper, each edit's key averaged over its prompts (False: half the bare prompt's key, half the mean of the context-prefixed ones, as the authors' code does)"})
    batch_size: int = field(default=0, metadata={"help": "edits solved together (0 = all edits of a stage in one batch)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.layers):
            raise ConfigError("layers", f"layers must be a list of layer indices >= 0, got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError("layers", f"layers must not repeat a layer, got {self.layers!r}")
        for name in ("span", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "span" else 0):
                raise ConfigError(name, f"{name} must be an integer >= {1 if name == 'span' else 0}, got {value!r}")
        if type(self.per_prompt_keys) is not bool:
            raise ConfigError("per_prompt_keys", f"per_prompt_keys must be true or false, got {self.per_prompt_keys!r}")
        check_number(self.covariance_weight, "covariance_weight", low=0, low_open=True)


def edited_layers(config: MemitConfig, model) -> list[int]:
    if config.layers:
        return sorted(config.layers)
    top = config.layer if config.layer >= 0 else default_layer(model)
    return list(range(max(0, top - config.span + 1), top + 1))


def least_squares_update(moment: torch.Tensor, keys: torch.Tensor, residual: torch.Tensor, weight: float) -> torch.Tensor:
    """(out, in) Delta minimising ||Delta K - R||^2 + weight * tr(Delta C Delta^T)
    for keys (n, in) and residuals (n, out): Delta = R^T K (weight C + K^T K)^-1."""
    keys, residual = keys.double(), residual.double().to(keys.device)
    return update_from_sums(moment, keys.T @ keys, keys.T @ residual, weight)


def update_from_sums(moment: torch.Tensor, kk: torch.Tensor, kr: torch.Tensor, weight: float) -> torch.Tensor:
    """The same Delta from the sums K^T K (in, in) and K^T R (in, out) alone: what
    several parties' keys and residuals add up to (CollabEdit's merge)."""
    system = weight * moment.double().to(kk.device) + kk.double()  # (in, in), symmetric
    try:
        return torch.linalg.solve(system, kr.double()).T.float()  # solve(A, K^T R)^T = R^T K A^-1
    except torch.linalg.LinAlgError:
        # A key unit never active on any text or edit prompt (a ReLU unit dead everywhere)
        # leaves a zero row and column: the minimum-norm solution leaves its column unchanged.
        return (torch.linalg.pinv(system, hermitian=True) @ kr.double()).T.float()


class Memit(Method):
    """Edits a batch of facts at once over a range of MLP layers."""

    kinds = frozenset(EDIT_KINDS)

    def __init__(self, config: MemitConfig):
        self.config = config
        self.name = "memit"
        self.statistics = KeyStatistics(config.covariance_samples)

    def apply(self, model, change: Change, ctx: StageContext) -> tuple[object, ApplyStats]:
        start = time.perf_counter()
        stats = ApplyStats(not_applied={k: change.count(k) for k in change.kinds if k not in self.kinds})
        layers = edited_layers(self.config, model)
        top = blocks(model)
        if layers[-1] >= len(top) - 1:
            raise ValueError(f"memit.layers: layer {layers[-1]} is the model's last ({len(top)} layers); the edited layers must leave one above them")
        records = edit_records(change)
        size = self.config.batch_size or max(1, len(records))
        for begin in range(0, len(records), size):
            chunk = records[begin : begin + size]
            stats.steps += self._edit_batch(model, chunk, layers, ctx)
            self.statistics.model_is_base = False
            if ctx.progress:
                ctx.progress(0, begin + len(chunk), 0.0)
        modules = [mlp_output_projection(model, layer) for layer in layers]
        stats.trainable_params = sum(value_matrix(m).numel() for m in modules) if records else 0
        stats.total_params = count_parameters(model)[1]
        stats.seconds = time.perf_counter() - start
        return model, stats

    def _edit_batch(self, model, records, layers: list[int], ctx: StageContext) -> int:
        moments = [self.statistics.get(model, ctx.tokenizer, layer, ctx) for layer in layers]
        batches = edit_batches(ctx.tokenizer, records, ctx.relations, prefix_pool(ctx.general_text, ctx.base, ctx.relations), self.config.prefixes, self.config.essence_prompt, ctx.seed, self.config.subject_token)
        rewrite = batches.rewrite
        z_block = blocks(model)[layers[-1]]
        targets = optimize_values(model, z_block, rewrite, self.config.settings(), essence=batches.essence)
        for i, (layer, moment) in enumerate(zip(layers, moments)):
            module = mlp_output_projection(model, layer)
            keys, residual = self.keys_and_residual(model, rewrite, targets.values, module, z_block, len(layers) - i)
            add_update(module, least_squares_update(moment, keys, residual, self.config.covariance_weight))
        return targets.steps

    def keys_and_residual(self, model, rewrite, values: torch.Tensor, module, z_block, layers_left: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys at `module`'s input and this layer's share of the residual to the
        target hidden states `values` (G, d), on the model as it is now: (G, in) and
        (G, d), or one row per prompt with `per_prompt_keys`."""
        keys, hidden = capture(model, rewrite, [(module, "in"), (z_block, "out")])  # (B, in), (B, d)
        residual = (values.to(hidden) - hidden[rewrite.first_rows()]) / layers_left  # (G, d)
        if self.config.per_prompt_keys:  # every prompt's key maps to its edit's residual
            return keys, residual[rewrite.group.to(residual.device)]  # (B, in), (B, d)
        return context_weighted_mean(keys, rewrite), residual  # (G, in), (G, d)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.statistics.model_is_base = False


register_method("memit", MemitConfig, Memit, "MEMIT: batched edits spread over a range of MLP layers (Meng et al. 2023)", kinds=EDIT_KINDS)
