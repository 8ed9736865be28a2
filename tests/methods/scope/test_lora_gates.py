"""Selective LoRA: each LoRA block's output is scaled by its gate; the L1 penalty switches
blocks off, and the merged model changes only in the layers whose blocks stayed on."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.model import lm


def _stage(tiny_stream, tiny_model_dir, accelerator, sparsity, keep=None):
    model, tokenizer = lm.load(tiny_model_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = build_method("lora+lora_gates", {"train": {"epochs": 10, "lr": 3e-3}, "lora": {"r": 4}, "lora_gates": {"sparsity": sparsity}})
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
    if keep is not None:
        gates = method.parts[1]
        finish = gates.finish

        def keeping(model, ctx):
            keep.update(gates.gate_values())
            return finish(model, ctx)

        gates.finish = keeping
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, change, ctx)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    return method.parts[1].active[-1], moved


def test_a_closed_gate_removes_its_blocks_update(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
    method = build_method("lora+lora_gates", {"lora": {"r": 4}})
    lora, gates = method.parts
    prompt = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(prompt).logits
    model = gates.prepare(lora.prepare(model, ctx), ctx)
    with torch.no_grad():
        for name, block in gates.blocks.items():
            block.lora_B["default"].weight.normal_()
        opened = model(prompt).logits
        for g in gates.gates.values():
            g.zero_()
        closed = model(prompt).logits
    assert not torch.allclose(opened, base, atol=1e-4)
    torch.testing.assert_close(closed, base)


def test_the_penalty_switches_blocks_off_and_only_the_selected_layers_move(tiny_stream, tiny_model_dir, accelerator):
    gates = {}
    free, moved_free = _stage(tiny_stream, tiny_model_dir, accelerator, 0.0)
    sparse, moved_sparse = _stage(tiny_stream, tiny_model_dir, accelerator, 0.05, keep=gates)
    # measured (one thread): 12 of 12 blocks on without the penalty, 6 of 12 with it
    # (gates from -0.02 to 0.95; the six below 0.1 switched off), and 6 layers moved instead of 12
    assert sparse < free, (sparse, free)
    assert len(moved_sparse) < len(moved_free)
    off = {name for name, g in gates.items() if abs(g) < 0.1}
    assert off and not any(n.startswith(name.split("base_model.model.", 1)[-1]) for n in moved_sparse for name in off)


def test_it_needs_lora_and_refuses_bad_options():
    with pytest.raises(ValueError, match="lora"):
        build_method("lora_gates", {})
    with pytest.raises(ValueError, match="sparsity"):
        build_method("lora+lora_gates", {"lora_gates": {"sparsity": -1}})
