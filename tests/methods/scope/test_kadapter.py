"""K-Adapter: parallel adapters leave the frozen model's function unchanged when attached,
only they train, a new one joins per stage, and they survive a checkpoint."""

import pytest
import torch
from safetensors.torch import save_file

from ckl.model import lm
from ckl.methods.base import StageContext, build_method
from ckl.methods.scope.kadapter import NAME, KAdapter, KAdapterConfig

TRAIN = {"epochs": 3, "lr": 3e-3}


def _ctx(stream, tokenizer, accelerator, stage=1):
    change = stream.stages[stage - 1]
    return change, StageContext(stream.relations, stream.base, stage, 0, tokenizer, accelerator, change=change)


def _prompt(vocab_size):
    return torch.randint(3, vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))


def test_attached_adapter_leaves_outputs_unchanged(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        before = model(prompt).logits
    _, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    model = KAdapter(KAdapterConfig(size=16)).prepare(model, ctx)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, before, atol=0, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(NAME + ".") for n in trainable)


def test_only_the_adapter_trains(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        before = model(prompt).logits
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    method = build_method("kadapter", {"train": TRAIN, "kadapter": {"size": 16}})
    model, stats = method.apply(model, change, ctx)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], base[n]) for n in base)  # the base model is bit-identical
    adapter = {n: p for n, p in after.items() if n.startswith(NAME + ".")}
    assert any(p.abs().sum() > 0 for n, p in adapter.items() if ".up." in n)  # the output left zero
    assert stats.trainable_params == sum(p.numel() for p in adapter.values())
    with torch.no_grad():
        assert not torch.allclose(model(prompt).logits, before)  # and the model's function moved


def test_a_new_adapter_per_stage_and_earlier_ones_frozen(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    method = build_method("kadapter", {"train": TRAIN, "kadapter": {"size": 16}})
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    model, _ = method.apply(model, change, ctx)
    first = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(f"{NAME}.adapters.0.")}
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator, stage=2)
    model, _ = method.apply(model, change, ctx)
    module = getattr(model, NAME)
    assert len(module.adapters) == 2
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], first[n]) for n in first)


def test_adapters_survive_save_and_reload(tiny_stream, tiny_model, accelerator, tmp_path):
    from ckl.run.experiment import _join_state, _split_state

    model, tokenizer = tiny_model
    method = build_method("kadapter", {"train": TRAIN, "kadapter": {"size": 16}})
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    model, _ = method.apply(model, change, ctx)
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        trained = model(prompt).logits
    lm.save(model, tokenizer, tmp_path / "ckpt")  # what the runner does
    data, tensors = _split_state(method.state_dict())
    save_file(tensors, str(tmp_path / "state.safetensors"))
    loaded, _ = lm.load(tmp_path / "ckpt")
    assert not hasattr(loaded, NAME)  # the directory is the plain base model
    with torch.no_grad():
        assert not torch.allclose(loaded(prompt).logits, trained)
    fresh = build_method("kadapter", {"kadapter": {"size": 16}})
    fresh.load_state_dict(_join_state(data, tmp_path / "state.safetensors"))
    restored = fresh.restore(loaded)
    with torch.no_grad():
        torch.testing.assert_close(restored(prompt).logits, trained)


def test_a_copy_of_the_model_runs_its_own_adapters(tiny_stream, tiny_model, accelerator):
    from ckl.methods.distill.lwf import Lwf, LwfConfig

    model, tokenizer = tiny_model
    _, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    model = KAdapter(KAdapterConfig(size=16)).prepare(model, ctx)
    teacher = Lwf(LwfConfig())
    teacher.prepare(model, ctx)  # LwF deep-copies the stage-start model
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        before = teacher.teacher.model(prompt).logits
        getattr(model, NAME).adapters[0].up.weight.fill_(0.1)  # the student's adapter moves
        assert not torch.allclose(model(prompt).logits, before)
        torch.testing.assert_close(teacher.teacher.model(prompt).logits, before, atol=0, rtol=0)


@pytest.mark.parametrize("bad", [{"size": 0}, {"layers": []}, {"layers": [0, 0]}, {"per_stage": "yes"}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("kadapter", {"kadapter": bad})


def test_a_tap_past_the_last_block_is_refused(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    _, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    with pytest.raises(ValueError, match="kadapter.layers"):
        KAdapter(KAdapterConfig(layers=[0, 9])).prepare(model, ctx)


def test_attached_modules_are_never_taken_for_the_models_blocks(tiny_model):
    from ckl.model.layers import find_blocks

    model, _ = tiny_model
    big = torch.nn.ModuleList(torch.nn.Linear(256, 256) for _ in range(8))  # larger than every block together
    model.add_module("ckl_test", torch.nn.Module())
    model.ckl_test.add_module("stack", big)
    prefix, blocks = find_blocks(model)
    assert prefix == "transformer.h" and blocks is model.transformer.h
