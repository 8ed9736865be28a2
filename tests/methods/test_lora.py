import torch

from ckl.methods.base import StageContext, build_method
from ckl.stream import Change


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
