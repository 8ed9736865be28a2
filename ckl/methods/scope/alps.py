"""ALPS: train only the attention heads most sensitive to the stage's data (Chen et al.
2025, "ALPS: Attention Localization and Pruning Strategy for Efficient Alignment of Large
Language Models").

Before each stage, every attention head of every block is scored on documents of the
stage's taught facts: the sum of |theta * dL/dtheta| (`ckl.methods.penalty._estimate`)
over the head's weights (its rows of the query, key and value projections, with their
biases, and its columns of the output projection). The `fraction` highest-scoring heads
of each block train; the rest of every attention weight gets no gradient (the update is
pruned to the chosen heads, `ckl.methods.scope._masks`), and everything else (feed-
forward blocks, embeddings, norms, the output projection's bias) is frozen.
tests/methods/scope/test_alps.py checks that the chosen heads are the highest-scoring and
that every other head's weights stay bit-identical.

Deviations: the paper localises the heads once on the task's data with its own
sensitivity measure (the change of each head's attention distribution under fine-tuning)
and prunes the update of the rest; here the score is |theta * grad| of the next-token
loss, taken before each stage, and every block trains the same fraction of its heads.
Supported layouts: GPT-2's fused `c_attn` / `c_proj`, GPT-NeoX's per-head fused
`query_key_value` / `dense`, and separate `q_proj`, `k_proj`, `v_proj` with `o_proj`
(Llama, Mistral, Qwen, Gemma), `out_proj` (OPT) or `dense` (Phi); grouped key-value heads
train when any of their query heads does. Other attention modules are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count, check_number
from ckl.data.stream import render_documents
from ckl.methods.base import StageContext, register_part
from ckl.methods.penalty._estimate import gradient_statistic
from ckl.methods.penalty.l2 import canonical_name
from ckl.methods.scope._masks import MaskedUpdates
from ckl.model.layers import find_blocks, is_transposed
from ckl.train.loop import rng_for


@dataclass
class AlpsConfig:
    fraction: float = field(default=0.25, metadata={"help": "share of each block's attention heads that train (the most sensitive to the stage's data), in (0, 1]"})
    samples: int = field(default=256, metadata={"help": "most documents scored before each stage"})
    batch_size: int = field(default=4, metadata={"help": "documents per gradient when scoring"})

    def __post_init__(self) -> None:
        check_number(self.fraction, "fraction", low=0, low_open=True, high=1)
        check_count(self.samples, "samples")
        check_count(self.batch_size, "batch_size")


def _config_value(model, *names):
    config = getattr(model, "config", None)
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    return None


def head_layout(model) -> list[dict]:
    """Per block: its head count and, for each attention weight, which head owns each unit:
    {"heads": H, "parts": [(canonical name, transposed or None for a bias, along_output,
    owner: long tensor unit -> head)]}. Key/value units of grouped heads belong to the
    first query head of their group and are marked by `group` for widening.

    Raises:
        ValueError: the model's attention has no layout ckl knows.
    """
    heads = _config_value(model, "num_attention_heads", "n_head")
    kv_heads = _config_value(model, "num_key_value_heads") or heads
    if not heads:
        raise ValueError("alps: the model's config names no attention head count (num_attention_heads / n_head)")
    prefix, stack = find_blocks(model)
    layout = []
    for i, block in enumerate(stack):
        modules = {n: m for n, m in block.named_modules() if hasattr(m, "weight")}
        base = f"{prefix}.{i}."
        parts = []
        gpt2 = next((n for n in modules if n.endswith("c_attn")), None)
        neox = next((n for n in modules if n.endswith("query_key_value")), None)
        if gpt2 is not None or neox is not None:
            # fused projections: GPT-2 stores [q | k | v] along the output, each of H heads;
            # GPT-NeoX stores per head [q_h | k_h | v_h] (its forward views the output as H x 3 hd)
            fused = gpt2 or neox
            m = modules[fused]
            d = (m.weight.shape[1] if is_transposed(m) else m.weight.shape[0]) // 3
            hd = d // heads
            owner = (torch.arange(3 * d) % d) // hd if gpt2 else torch.arange(3 * d) // (3 * hd)
            parts.append((canonical_name(base + fused + ".weight"), is_transposed(m), True, owner))
            if getattr(m, "bias", None) is not None:
                parts.append((canonical_name(base + fused + ".bias"), None, True, owner))
            out = next(n for n in modules if n.endswith("attn.c_proj" if gpt2 else "attention.dense"))
            parts.append((canonical_name(base + out + ".weight"), is_transposed(modules[out]), False, torch.arange(d) // hd))
        else:
            names = {k: next((n for n in modules if n.endswith(k)), None) for k in ("q_proj", "k_proj", "v_proj")}
            # the output projection: o_proj (Llama, Mistral, Qwen, Gemma), out_proj (OPT), dense (Phi)
            names["o_proj"] = next((n for n in modules if n.endswith((".o_proj", ".out_proj", "attn.dense")) or n in ("o_proj", "out_proj")), None)
            if None in names.values():
                raise ValueError(f"alps: block {i}'s attention has no layout ckl knows (GPT-2 c_attn, GPT-NeoX query_key_value, or q/k/v projections with o_proj / out_proj / dense; found {', '.join(sorted(modules))[:200]})")
            group = heads // kv_heads
            for key in ("q_proj", "k_proj", "v_proj"):
                m = modules[names[key]]
                units = m.weight.shape[0]
                hd = units // (heads if key == "q_proj" else kv_heads)
                owner = torch.arange(units) // hd
                if key != "q_proj":
                    owner = owner * group  # a key/value head stands for the first query head of its group
                parts.append((canonical_name(base + names[key] + ".weight"), False, True, owner))
                if getattr(m, "bias", None) is not None:
                    parts.append((canonical_name(base + names[key] + ".bias"), None, True, owner))
            o = modules[names["o_proj"]]
            parts.append((canonical_name(base + names["o_proj"] + ".weight"), False, False, torch.arange(o.weight.shape[1]) // (o.weight.shape[1] // heads)))
        layout.append({"heads": heads, "group": heads // kv_heads, "parts": parts})
    return layout


def _unit_scores(element: torch.Tensor, transposed, along_output: bool) -> torch.Tensor:
    if transposed is None:
        return element
    column = transposed == along_output  # units are columns of the stored weight
    return element.sum(dim=0) if column else element.sum(dim=1)


def _mask(shape, transposed, along_output: bool, units: torch.Tensor) -> torch.Tensor:
    if transposed is None:
        return units.clone()
    column = transposed == along_output
    return units[None, :].expand(shape).clone() if column else units[:, None].expand(shape).clone()


class Alps(MaskedUpdates):
    name = "alps"

    def __init__(self, config: AlpsConfig):
        self.config = config
        self.masks: dict[str, torch.Tensor] = {}
        self.chosen: list[torch.Tensor] = []  # per block, the heads that train this stage
        self.scores: list[torch.Tensor] = []  # per block, each head's score this stage
        self.frozen = []

    def prepare(self, model, ctx: StageContext):
        layout = head_layout(model)
        change = ctx.change
        taught = change.taught() if change is not None else []
        self.masks, self.chosen, self.scores = {}, [], []
        if taught:
            rng = rng_for(ctx.seed, "alps", ctx.stage)
            docs = render_documents(taught, ctx.relations, rng, qa_subjects=ctx.qa_subjects)
            docs = rng.sample(docs, min(self.config.samples, len(docs)))
            element = gradient_statistic(model, ctx.tokenizer, docs, self.config.batch_size, lambda w, g: (w * g).abs(), ctx.accelerator)
        for block in layout:
            H = block["heads"]
            score = torch.zeros(H)
            if taught:
                for name, transposed, along, owner in block["parts"]:
                    score.index_add_(0, owner, _unit_scores(element[name], transposed, along).float())
            k = max(1, int(round(self.config.fraction * H)))
            heads = torch.argsort(score, descending=True, stable=True)[:k]
            self.scores.append(score)
            self.chosen.append(heads)
            chosen = torch.zeros(H, dtype=torch.bool)
            chosen[heads] = True
            widened = chosen.clone()
            g = block["group"]
            if g > 1:  # a grouped key/value head trains when any query head of its group does
                widened = chosen.reshape(-1, g).any(dim=1).repeat_interleave(g)
            params = {canonical_name(n): p for n, p in model.named_parameters()}
            for name, transposed, along, owner in block["parts"]:
                self.masks[name] = _mask(params[name].shape, transposed, along, widened[owner])
        self.freeze(p for n, p in model.named_parameters() if canonical_name(n) not in self.masks)
        return model


register_part("alps", AlpsConfig, Alps, "ALPS: train only each block's attention heads most sensitive to the stage's data; the rest of the update pruned")
