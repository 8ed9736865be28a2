"""ALPS: the heads that train are each block's highest-scoring on the stage's data, every
other head's attention weights and everything outside attention stay bit-identical, and
the head layout is right for GPT-2's fused projection and for grouped-query Llama heads."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.scope.alps import head_layout
from ckl.model import lm


def test_only_the_most_sensitive_heads_train(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("alps", {"train": {"epochs": 3, "lr": 3e-3}, "alps": {"fraction": 0.5}})
    change = tiny_stream.stages[0]
    model, _ = method.apply(model, change, StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change))
    part = method.parts[0]
    after = model.state_dict()
    d, H = model.config.n_embd, model.config.n_head
    hd = d // H
    for i, (heads, scores) in enumerate(zip(part.chosen, part.scores)):
        assert len(heads) == 1 and int(heads[0]) == int(torch.argmax(scores))  # the highest-scoring head
        for h in range(H):
            cols = torch.cat([torch.arange(h * hd, (h + 1) * hd) + j * d for j in range(3)])  # its q, k, v columns
            attn, proj = f"transformer.h.{i}.attn.c_attn.weight", f"transformer.h.{i}.attn.c_proj.weight"
            moved = not torch.equal(after[attn][:, cols], before[attn][:, cols])
            assert moved == (h == int(heads[0])), (i, h)
            assert torch.equal(after[proj][h * hd:(h + 1) * hd], before[proj][h * hd:(h + 1) * hd]) == (h != int(heads[0]))
    for k in before:
        if ".attn.c_attn." not in k and ".attn.c_proj.weight" not in k:
            assert torch.equal(after[k], before[k]), k  # feed-forward, embeddings, norms: frozen


def test_grouped_query_heads_widen_to_their_key_value_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(config)
    (block,) = head_layout(model)
    assert block["heads"] == 4 and block["group"] == 2
    owners = {name.rsplit(".", 2)[-2]: owner for name, _, _, owner in block["parts"]}
    assert owners["q_proj"].tolist() == [h for h in range(4) for _ in range(8)]
    assert owners["k_proj"].tolist() == [0] * 8 + [2] * 8  # kv head 1 serves query heads 2 and 3
    assert owners["o_proj"].tolist() == [h for h in range(4) for _ in range(8)]


def test_options_are_checked():
    with pytest.raises(ValueError, match="fraction"):
        build_method("alps", {"alps": {"fraction": 0}})
    with pytest.raises(ValueError, match="cannot be combined"):
        build_method("lora+alps")
