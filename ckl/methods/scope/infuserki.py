"""InfuserKI: knowledge adapters whose output is gated by an infuser that recognises, from
the hidden states, whether the model already knows what it is reading (Wang et al. 2024,
"InfuserKI: Enhancing Large Language Models with Knowledge Graphs via Infuser-Guided
Knowledge Integration").

A scope part on a frozen model. Each chosen block l (default: the upper half) gets an
adapter and an infuser reading the block's output hidden state h (per token):

    h <- h + g_l(h) * up(gelu(down(h))),    g_l(h) = sigmoid(w2 . relu(W1 h) + b)

`up` starts at zero, so attaching leaves the model's outputs unchanged. Training adds to
the next-token loss on the stage's new facts (where the gates are free to open) the
infuser's binary cross-entropy: every token of the teaching batch is "unknown" (target 1)
and every token of a batch of the base model's own knowledge (K0 documents, one batch per
step, the same size) is "known" (target 0), weighted by `infuser`. On what the model
already knows the gates learn to stay shut, so the adapters do not disturb it; on the new
facts they open. The mean gates on the last teaching and known batches are the part's row
notes.

Persistence: the adapters and infusers stay attached across stages and keep training (see
`ckl.methods.scope.attached`), their weights the part's state.

Deviations: the paper places adapters in parallel to the feed-forward layers of the top
blocks and labels each training question known or unknown by whether the base model
answers it; here the adapter sits on the block's output (a residual adapter every
architecture has the hook for), "known" is the base model's training text (K0) and
"unknown" the stage's taught facts, and the paper's relation-classification auxiliary task
is left out.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.stream import render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.scope._base import ScopePart
from ckl.methods.scope.attached import AttachedState, attach, attached, load_module_state, model_device_dtype
from ckl.model.layers import find_blocks
from ckl.train.batching import pack
from ckl.train.loop import rng_for

NAME = "ckl_infuserki"


@dataclass
class InfuserKIConfig:
    layers: list[int] | None = field(default=None, metadata={"help": "indices of the blocks that get an adapter and infuser (default: the upper half)"})
    size: int = field(default=64, metadata={"help": "adapter bottleneck width"})
    hidden: int = field(default=32, metadata={"help": "infuser hidden width"})
    infuser: float = field(default=1.0, metadata={"help": "weight of the infuser's known/unknown cross-entropy"})
    block_size: int = field(default=128, metadata={"help": "tokens per block of the known (K0) batches"})

    def __post_init__(self) -> None:
        if self.layers is not None and (not isinstance(self.layers, list) or not self.layers
                                        or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers)):
            raise ConfigError("layers", f"layers must be a non-empty list of block indices >= 0, got {self.layers!r}")
        check_count(self.size, "size")
        check_count(self.hidden, "hidden")
        check_number(self.infuser, "infuser", low=0)
        check_count(self.block_size, "block_size")


class GatedAdapter(torch.nn.Module):
    def __init__(self, d_model: int, size: int, hidden: int):
        super().__init__()
        self.down = torch.nn.Linear(d_model, size)
        self.up = torch.nn.Linear(size, d_model)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)
        self.infuser = torch.nn.Sequential(torch.nn.Linear(d_model, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.infuser(h)).squeeze(-1)  # (B, T)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gate(h)
        return h + g.unsqueeze(-1) * self.up(F.gelu(self.down(h))), g


class InfusedAdapters(torch.nn.Module):
    """Every chosen block's gated adapter and the hooks that apply them; the gates of the
    last forward pass are kept while `recording`."""

    def __init__(self, d_model: int, size: int, hidden: int, layers: list[int]):
        super().__init__()
        self.layer_ids = list(layers)
        self.adapters = torch.nn.ModuleDict({str(i): GatedAdapter(d_model, size, hidden) for i in layers})
        self.recording = False  # during a stage: keep the training forwards' gates for the infuser loss
        self.force_open = False  # an ablation: every gate 1 (the adapters without their infusers)
        self.gates: list[torch.Tensor] = []

    def register(self, host: torch.nn.Module) -> None:
        _, stack = find_blocks(host)
        for i in self.layer_ids:
            stack[i].register_forward_hook(functools.partial(self.block_hook, str(i)))

    def block_hook(self, key: str, block, args, output):
        h = output[0] if isinstance(output, tuple) else output
        adapter = self.adapters[key]
        if self.force_open:
            new, g = h + adapter.up(F.gelu(adapter.down(h))), torch.ones(h.shape[:-1], device=h.device, dtype=h.dtype)
        else:
            new, g = adapter(h)
        if self.recording and self.training and torch.is_grad_enabled():  # training forwards only, not in-stage evaluation
            self.gates.append(g)
        return (new, *output[1:]) if isinstance(output, tuple) else new


class InfuserKI(AttachedState, ScopePart):
    name = "infuserki"
    keeps_modules = True  # the adapters live beside the weights (ckl.methods.scope.attached)
    reads_batch = True  # the infuser's "unknown" targets are the teaching batch's tokens

    def __init__(self, config: InfuserKIConfig):
        self.config = config
        self.module: InfusedAdapters | None = None
        self.saved: dict | None = None
        self.frozen: list[torch.nn.Parameter] = []
        self.known: tuple[torch.Tensor, torch.Tensor] | None = None  # packed K0 blocks (ids, mask)
        self.batch_size = 0
        self.mean_gates = {"known": float("nan"), "unknown": float("nan")}

    def _layers(self, n: int) -> list[int]:
        layers = self.config.layers if self.config.layers is not None else list(range(n // 2, n))
        if any(i >= n for i in layers):
            raise ValueError(f"infuserki.layers: {layers} names a block past the model's {n} blocks (0..{n - 1})")
        return sorted(set(layers))

    def _attach(self, model, seed: int) -> InfusedAdapters:
        module = attached(model, NAME)
        if module is None:
            saved = {k: t for k, t in (self.state_dict() or {}).items() if k.startswith("w.")}
            _, stack = find_blocks(model)
            d_model = int(model.get_input_embeddings().weight.shape[1])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng_for(seed, "infuserki").randrange(2**31))
                module = InfusedAdapters(d_model, self.config.size, self.config.hidden, self._layers(len(stack)))
            if saved:
                load_module_state(module, {k[2:]: t for k, t in saved.items()})
            module.to(*model_device_dtype(model))
        attach(model, NAME, module, module.register)
        self.module = module
        return module

    def prepare(self, model, ctx: StageContext):
        if int(getattr(ctx.accelerator, "num_processes", 1) or 1) > 1:
            # the known batch is a second forward pass of the wrapped model before one backward
            raise ValueError("infuserki runs on one process only (its infuser loss needs a second forward pass per step)")
        module = self._attach(model, ctx.seed)
        module.recording, module.gates = True, []
        self.frozen = []
        self.freeze(model.parameters())
        for p in module.parameters():
            p.requires_grad_(True)
        rng = random.Random(f"ckl.infuserki/{ctx.seed}/{ctx.stage}")
        docs = render_documents(list(ctx.base), ctx.relations, rng, qa_subjects=ctx.qa_subjects) + list(ctx.general_text)
        rng.shuffle(docs)
        self.known = pack(ctx.tokenizer, docs, self.config.block_size)[:2] if docs else None
        return model

    def _bce(self, gates: list[torch.Tensor], mask: torch.Tensor, target: float) -> torch.Tensor:
        g = torch.stack(gates).float().clamp(1e-6, 1 - 1e-6)  # (layers, B, T)
        m = mask.to(g.dtype).expand_as(g)
        return F.binary_cross_entropy(g, torch.full_like(g, target), weight=m, reduction="sum") / m.sum().clamp_min(1)

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        module = self.module
        if module is None or batch is None or self.config.infuser == 0 or self.known is None:
            return None
        unknown_gates, module.gates = module.gates, []  # recorded by the teaching batch's forward
        if not unknown_gates:
            return None
        mask = batch["attention_mask"]
        ids, known_mask = self.known
        n = int(mask.shape[0])
        start = (step * n) % (len(ids) - n + 1) if len(ids) > n else 0  # the known blocks in turn
        kmask = known_mask[start:start + n].to(mask.device)
        model(input_ids=ids[start:start + n].to(mask.device), attention_mask=kmask)
        known_gates, module.gates = module.gates, []
        term = self._bce(unknown_gates, mask, 1.0) + self._bce(known_gates, kmask, 0.0)
        with torch.no_grad():
            self.mean_gates = {"unknown": float(torch.stack([g.float().mean() for g in unknown_gates]).mean()),
                               "known": float(torch.stack([g.float().mean() for g in known_gates]).mean())}
        return self.config.infuser * term

    def finish(self, model, ctx: StageContext):
        super().finish(model, ctx)
        if self.module is not None:
            self.module.recording, self.module.gates = False, []
        self.known = None
        return model

    def restore(self, model):
        if self.module is not None or self.saved:
            self._attach(model, 0)
        return model

    def row_notes(self) -> dict:
        if any(v != v for v in self.mean_gates.values()):  # NaN: no stage trained yet
            return {}
        return {"infuser_gate_known": self.mean_gates["known"], "infuser_gate_unknown": self.mean_gates["unknown"]}



register_part("infuserki", InfuserKIConfig, InfuserKI, "InfuserKI: adapters on the upper blocks gated per token by infusers trained to shut on what the model already knows (K0) and open on new facts; the model frozen (kept attached)")
