"""K-Adapter: knowledge in small adapters running in parallel to a frozen model (Wang et al.
2021, "K-Adapter: Infusing Knowledge into Pre-Trained Models with Adapters").

A scope part. An adapter is a chain of adapter layers, one per chosen ("tapped") block of
the base model: adapter layer k reads the hidden state h_k that block emits and the output
a_{k-1} of the adapter layer before it,

    x_k = W_k h_k + a_{k-1},    a_k = x_k + MLP(LayerNorm(x_k))        (width `size`)

and the last one's output, projected back to the model width by `up`, is added to the
hidden state of the model's last block (the final hidden state, before the final norm and
the LM head). `up` starts at zero, so attaching an adapter leaves the model's outputs
exactly as they were. The base model is frozen; only the adapter trains.

Stages: with `per_stage` (default) every stage adds a new adapter, trained on that stage
only while the earlier ones stay frozen, and their outputs are summed (K-Adapter keeps one
adapter per kind of knowledge, trained independently); otherwise one adapter keeps
training across stages. Persistence (see `ckl.methods.scope.attached`): the adapters stay
attached to the model as a submodule that `save_pretrained` leaves out; their weights are
the part's state, checkpointed by the runner and re-attached by `restore` / `prepare`.

Deviations from the paper:
- adapter layers are position-wise (a residual MLP), not transformer layers: the context
  already sits in the frozen model's hidden states, and a position-wise adapter stays
  exact under any attention layout the caller uses (the scorer's packed prefix trees);
- the paper concatenates an adapter layer's two inputs and concatenates the adapters'
  outputs with the model's for a task head; here they are summed (a linear map of the
  concatenation), as an LM has no separate task head;
- taps default to the first, middle and last blocks (the paper taps layers 0, 11 and 23
  of RoBERTa-large's 24).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError
from ckl.methods.scope.attached import AttachedState, attach, attached, load_module_state, model_device_dtype
from ckl.methods.base import StageContext, register_part
from ckl.model.layers import find_blocks
from ckl.methods.scope._base import ScopePart
from ckl.train.loop import rng_for

NAME = "ckl_kadapter"  # the submodule's name on the model


@dataclass
class KAdapterConfig:
    layers: list[int] | None = field(default=None, metadata={"help": "indices of the blocks whose hidden states feed the adapter layers (default: first, middle and last)"})
    size: int = field(default=64, metadata={"help": "width of the adapter layers"})
    per_stage: bool = field(default=True, metadata={"help": "add a new adapter per stage, earlier ones frozen (false: keep training one adapter)"})

    def __post_init__(self) -> None:
        if self.layers is not None:
            if not isinstance(self.layers, list) or not self.layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
                raise ConfigError("layers", f"layers must be a non-empty list of block indices >= 0, got {self.layers!r}")
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError("layers", f"layers must not repeat a block, got {self.layers!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError("size", f"size must be a positive integer, got {self.size!r}")
        if not isinstance(self.per_stage, bool):
            raise ConfigError("per_stage", f"per_stage must be true or false, got {self.per_stage!r}")


class AdapterLayer(torch.nn.Module):
    def __init__(self, d_model: int, size: int):
        super().__init__()
        self.down = torch.nn.Linear(d_model, size)
        self.norm = torch.nn.LayerNorm(size)
        self.fc1 = torch.nn.Linear(size, 2 * size)
        self.fc2 = torch.nn.Linear(2 * size, size)

    def forward(self, hidden: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        x = self.down(hidden)  # (B, T, size)
        if previous is not None:
            x = x + previous
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Adapter(torch.nn.Module):
    """One knowledge adapter: a chain of adapter layers and a zero-initialised output."""

    def __init__(self, d_model: int, size: int, taps: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(AdapterLayer(d_model, size) for _ in range(taps))
        self.up = torch.nn.Linear(size, d_model)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        a = None
        for layer, hidden in zip(self.layers, taps):
            a = layer(hidden, a)
        return self.up(a)  # (B, T, d_model)


class ParallelAdapters(torch.nn.Module):
    """Every adapter, and the hooks that feed them and add their output back."""

    def __init__(self, d_model: int, size: int, taps: list[int], last: int):
        super().__init__()
        self.d_model, self.size, self.taps, self.last = d_model, size, list(taps), last
        self.adapters = torch.nn.ModuleList()
        self._captured: dict[int, torch.Tensor] = {}

    def add_adapter(self) -> Adapter:
        adapter = Adapter(self.d_model, self.size, len(self.taps))
        self.adapters.append(adapter)
        return adapter

    def register(self, host: torch.nn.Module) -> None:
        _, blocks = find_blocks(host)
        for index in sorted(set(self.taps) | {self.last}):
            blocks[index].register_forward_hook(functools.partial(self.block_hook, index))

    def block_hook(self, index: int, block, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (B, T, d_model)
        if index in self.taps:
            self._captured[index] = hidden
        if index != self.last:
            return None
        taps = [self._captured.pop(i) for i in self.taps]
        if not len(self.adapters):
            return None
        hidden = hidden + sum(adapter(taps) for adapter in self.adapters)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class KAdapter(AttachedState, ScopePart):
    name = "kadapter"
    keeps_modules = True  # the adapters live beside the weights (ckl.methods.scope.attached)

    def __init__(self, config: KAdapterConfig):
        self.config = config
        self.module: ParallelAdapters | None = None
        self.saved: dict | None = None  # state loaded from a checkpoint, not yet attached
        self.frozen: list[torch.nn.Parameter] = []

    def _attach(self, model) -> ParallelAdapters:
        """The model's adapters: already attached, rebuilt from saved state, or new (empty)."""
        module = attached(model, NAME)
        if module is None:
            saved = self.state_dict() or None  # a model without them: re-attach the kept ones
            _, blocks = find_blocks(model)
            taps = saved["taps"] if saved else self._taps(len(blocks))
            d_model = int(model.get_input_embeddings().weight.shape[1])
            module = ParallelAdapters(d_model, self.config.size, taps, len(blocks) - 1)
            if saved:
                for _ in range(int(saved["adapters"])):
                    module.add_adapter()
                load_module_state(module, {k[2:]: t for k, t in saved.items() if k.startswith("w.")})
            module.to(*model_device_dtype(model))
        attach(model, NAME, module, module.register)
        self.module = module
        return module

    def _taps(self, blocks: int) -> list[int]:
        taps = self.config.layers if self.config.layers is not None else sorted({0, blocks // 2, blocks - 1})
        if any(i >= blocks for i in taps):
            raise ValueError(f"kadapter.layers: {taps} names a block past the model's {blocks} blocks (0..{blocks - 1})")
        return list(taps)

    def prepare(self, model, ctx: StageContext):
        module = self._attach(model)
        if self.config.per_stage or not len(module.adapters):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng_for(ctx.seed, "kadapter", ctx.stage).randrange(2**31))
                module.add_adapter().to(*model_device_dtype(model))
            attach(model, NAME, module, module.register)  # the new adapter's keys
        self.frozen = []
        self.freeze(model.parameters())
        for p in module.adapters[-1].parameters():
            p.requires_grad_(True)
        return model

    def restore(self, model):
        if self.module is not None or self.saved:
            self._attach(model)
        return model

    def state_dict(self) -> dict:
        if self.module is None:
            return self.module_weights()
        return {"adapters": len(self.module.adapters), "taps": list(self.module.taps), **self.module_weights()}


register_part("kadapter", KAdapterConfig, KAdapter, "K-Adapter: parallel adapters fed from chosen blocks, added to the final hidden state; the model frozen")
