"""O-LoRA: each stage's LoRA is pushed orthogonal to the earlier stages' A subspaces, the
LoRAs are merged after each stage, and the earlier A's are the part's checkpointed state."""

import pytest

from ckl.model import lm
from ckl.methods.base import StageContext, build_method
from ckl.methods.scope.olora import subspace_overlap

R = 8


def _run_two_stages(stream, model_dir, accelerator, orthogonal):
    model, tokenizer = lm.load(model_dir)
    method = build_method("olora", {"train": {"epochs": 5, "lr": 3e-3}, "olora": {"r": R, "orthogonal": orthogonal}})
    for change in stream.stages[:2]:
        ctx = StageContext(stream.relations, stream.base, change.stage, 0, tokenizer, accelerator, change=change)
        model, _ = method.apply(model, change, ctx)
    return model, method


def test_penalty_keeps_the_new_lora_orthogonal_to_earlier_ones(tiny_stream, tiny_model_dir, accelerator):
    overlap = {}
    for orthogonal in (0.0, 0.5):
        model, method = _run_two_stages(tiny_stream, tiny_model_dir, accelerator, orthogonal)
        earlier = method.parts[0].earlier
        assert all(a.shape[0] == 2 * R for a in earlier.values())  # stage 1's rows, then stage 2's
        per_layer = [float(subspace_overlap(a[:R], a[R:])) for a in earlier.values()]
        overlap[orthogonal] = sum(per_layer) / len(per_layer)
    # measured: 0.0125 without the penalty (random rows in 64 dims: ~1/64), 0.0039 with it
    assert overlap[0.5] < 0.5 * overlap[0.0], overlap


def test_loras_are_merged_into_a_plain_model(tiny_stream, tiny_model_dir, accelerator):
    base, _ = lm.load(tiny_model_dir)
    model, method = _run_two_stages(tiny_stream, tiny_model_dir, accelerator, 0.5)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert set(dict(model.named_parameters())) == set(dict(base.named_parameters()))
    assert "transformer.h.0.attn.c_attn" in method.parts[0].earlier


def test_earlier_subspaces_survive_a_checkpoint(tiny_stream, tiny_model_dir, accelerator):
    _, method = _run_two_stages(tiny_stream, tiny_model_dir, accelerator, 0.5)
    fresh = build_method("olora", {"olora": {"r": R}})
    fresh.load_state_dict(method.state_dict())
    model, tokenizer = lm.load(tiny_model_dir)
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 3, 0, tokenizer, accelerator, change=change)
    part = fresh.parts[0]
    peft_model = part.prepare(model, ctx)
    penalty = part.loss(peft_model, {}, None, 0)
    assert penalty is not None and penalty.item() > 0
    penalty.backward()
    grads = {n for n, p in peft_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_A" in n for n in grads)  # the penalty moves only the new A's


def test_no_penalty_in_the_first_stage(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    method = build_method("olora", {})
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
    part = method.parts[0]
    peft_model = part.prepare(model, ctx)
    assert part.loss(peft_model, {}, None, 0) is None


@pytest.mark.parametrize("bad", [{"r": 0}, {"alpha": -1.0}, {"orthogonal": -0.1}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("olora", {"olora": bad})
