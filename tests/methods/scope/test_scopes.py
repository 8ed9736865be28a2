"""Scope parts that change which weights train: freezing the bottom blocks and block
expansion (LLaMA Pro), alone and composed with data and merge parts."""

import pytest
import torch

from ckl.model import lm
from ckl.methods.base import StageContext, build_method
from ckl.methods.scope.expansion import Expansion, ExpansionConfig, insertion_points
from ckl.methods.scope.freeze import FreezeConfig

TRAIN = {"epochs": 2, "lr": 3e-3}


def _ctx(stream, tokenizer, accelerator):
    change = stream.stages[0]
    return change, StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)


def _prompts(vocab_size, n=3):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab_size, (1, 6), generator=generator) for _ in range(n)]


def test_expansion_keeps_the_function_and_trains_only_new_blocks(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    layers = model.config.n_layer
    original = set(model.parameters())
    prompts = _prompts(model.config.vocab_size)
    with torch.no_grad():
        before = [model(p).logits for p in prompts]
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    model = Expansion(ExpansionConfig(blocks=2)).prepare(model, ctx)
    with torch.no_grad():
        for p, logits in zip(prompts, before):
            torch.testing.assert_close(model(p).logits, logits, atol=1e-5, rtol=0)
    assert model.config.n_layer == layers + 2 == len(model.transformer.h)
    assert [b.attn.layer_idx for b in model.transformer.h] == list(range(layers + 2))
    trainable = {p for p in model.parameters() if p.requires_grad}
    assert trainable and not trainable & original
    assert insertion_points(4, 2) == [1, 3] and insertion_points(2, 1) == [1]


def test_expanded_model_trains_saves_and_loads_deeper(tiny_stream, tiny_model, accelerator, tmp_path):
    model, tokenizer = tiny_model
    layers = model.config.n_layer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    new, stats = build_method("expansion", {"train": TRAIN}).apply(model, change, ctx)
    assert 0 < stats.trainable_params < stats.total_params
    assert all(p.requires_grad for p in new.parameters())  # finish unfreezes everything
    after = new.state_dict()
    # original blocks sit at shifted indices; the embeddings and final norm kept their names
    assert torch.equal(after["transformer.wte.weight"], before["transformer.wte.weight"])
    assert torch.equal(after["transformer.h.0.attn.c_attn.weight"], before["transformer.h.0.attn.c_attn.weight"])
    lm.save(new, tokenizer, tmp_path / "expanded")
    loaded, _ = lm.load(tmp_path / "expanded")
    assert loaded.config.n_layer == len(loaded.transformer.h) == layers + 1
    prompt = _prompts(new.config.vocab_size, 1)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(prompt).logits, new(prompt).logits)


def test_freeze_keeps_bottom_blocks_bit_identical_and_trains_the_top(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    new, _ = build_method("freeze", {"train": TRAIN, "freeze": {"layers": 1}}).apply(model, change, ctx)
    after = new.state_dict()
    top = model.config.n_layer - 1
    for k in before:
        if k.startswith("transformer.h.0.") or k.startswith(("transformer.wte", "transformer.wpe")):
            assert torch.equal(after[k], before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith(f"transformer.h.{top}."))
    assert all(p.requires_grad for p in new.parameters())


@pytest.mark.parametrize("expression", ["expansion+replay", "replay+lines", "lines+expansion+ema", "freeze+interpolate"])
def test_scope_and_merge_parts_compose(expression, tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    new, stats = build_method(expression, {"train": {"epochs": 1, "lr": 3e-3}}).apply(model, change, ctx)
    assert stats.steps > 0
    assert torch.isfinite(new(torch.tensor([[1, 2, 3]])).logits).all()


def test_scope_configs_name_the_bad_field(tiny_model):
    with pytest.raises(ValueError, match="layers"):
        FreezeConfig(layers=-1)
    with pytest.raises(ValueError, match="blocks"):
        ExpansionConfig(blocks=0)
    with pytest.raises(ValueError, match="expansion.blocks"):
        Expansion(ExpansionConfig(blocks=99)).prepare(tiny_model[0], None)
