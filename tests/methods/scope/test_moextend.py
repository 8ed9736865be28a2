"""MoExtend: at every stage after the first each layer gains a trainable copy of the expert
the stage's documents use most, splitting its router logit so the model is unchanged;
the old experts and router rows never move again; a checkpoint brings back the grown
mixture."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.model import lm

OPTIONS = {"train": {"epochs": 5, "lr": 1e-2}, "moextend": {"experts": 3, "new_experts": 2}}
PROMPT = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))


def _ctx(stream, change, tokenizer, accelerator):
    return StageContext(stream.relations, stream.base, change.stage, 0, tokenizer, accelerator, change=change)


def _first_stage(stream, model_dir, accelerator):
    model, tokenizer = lm.load(model_dir)
    method = build_method("moextend", OPTIONS)
    change = stream.stages[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, change, _ctx(stream, change, tokenizer, accelerator))
    return method, model, tokenizer


def test_extending_leaves_the_model_unchanged_and_only_the_new_experts_train(tiny_stream, tiny_model_dir, accelerator):
    method, model, tokenizer = _first_stage(tiny_stream, tiny_model_dir, accelerator)
    part = method.parts[0]
    assert set(part.expert_counts().values()) == {(0, 3)}
    with torch.no_grad():
        before = model(PROMPT).logits
    change = tiny_stream.stages[1]
    ctx = _ctx(tiny_stream, change, tokenizer, accelerator)
    model = part.prepare(model, ctx)
    assert set(part.expert_counts().values()) == {(3, 2)}
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, before, atol=1e-5, rtol=1e-5)
    assert all(len(set(split)) == 2 for split in part.split[-1].values())
    layer = next(iter(part.module.layers.values()))
    old = {n: getattr(layer, f"{n}_old").detach().clone() for n in ("A", "B", "router", "bias")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("_new") for n in trainable)
    part.finish(model, ctx)

    method, model, tokenizer = _first_stage(tiny_stream, tiny_model_dir, accelerator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model, _ = method.apply(model, change, _ctx(tiny_stream, change, tokenizer, accelerator))
    layer = next(iter(method.parts[0].module.layers.values()))
    for n, t in old.items():
        assert torch.equal(getattr(layer, f"{n}_old"), t), f"old {n} moved"
    assert not torch.equal(layer.B_new, layer.B_old[method.parts[0].split[-1][next(iter(method.parts[0].module.layers))]]), "the copies trained"


def test_the_grown_mixture_comes_back_from_a_checkpoint(tiny_stream, tiny_model_dir, accelerator):
    method, model, tokenizer = _first_stage(tiny_stream, tiny_model_dir, accelerator)
    change = tiny_stream.stages[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model, _ = method.apply(model, change, _ctx(tiny_stream, change, tokenizer, accelerator))
    with torch.no_grad():
        expected = model(PROMPT).logits
    fresh = build_method("moextend", OPTIONS)
    fresh.load_state_dict(method.state_dict())
    base, _ = lm.load(tiny_model_dir)
    base.load_state_dict(model.state_dict(), strict=False)  # the saved model directory: the base weights, no experts
    restored = fresh.restore(base)
    assert fresh.parts[0].expert_counts() == method.parts[0].expert_counts() and fresh.parts[0].stages == 2
    with torch.no_grad():
        torch.testing.assert_close(restored(PROMPT).logits, expected)


def test_new_experts_cannot_outnumber_the_old():
    with pytest.raises(ValueError, match="new_experts"):
        build_method("moextend", {"moextend": {"experts": 2, "new_experts": 3}})
