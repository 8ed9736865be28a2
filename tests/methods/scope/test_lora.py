import torch

from ckl.methods.base import StageContext, build_method


def test_lora_trains_only_adapters_and_merges_them_into_a_plain_model(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("lora", {"lora": {"r": 4}, "train": {"epochs": 2, "lr": 1e-2}})
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
    new, stats = method.apply(model, change, ctx)
    assert type(new).__name__ == "GPT2LMHeadModel"  # adapters merged away
    assert 0 < stats.trainable_params < stats.total_params / 5
    assert stats.total_params == sum(p.numel() for p in new.parameters())
    after = new.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("attn" in k for k in changed)
    assert "transformer.wte.weight" not in changed  # embeddings are not adapted


def test_wrapping_a_model_prints_no_library_deprecation_warning(tiny_stream, tiny_model_dir):
    # PEFT reads transformers' deprecated is_gradient_checkpointing; users saw its FutureWarning on every LoRA run
    import warnings

    from ckl.model import lm
    from ckl.methods.base import StageContext
    from ckl.methods.scope.lora import Lora, LoraConfig

    model, tokenizer = lm.load(tiny_model_dir)
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = Lora(LoraConfig(r=4)).prepare(model, ctx)
    assert any("lora_A" in name for name, _ in wrapped.named_parameters())  # it did wrap the model
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
