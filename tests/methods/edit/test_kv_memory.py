"""The gated key-value memory: edits change the edited facts, the gate is exactly zero for
every other prompt (bit-identical logits), and the memory survives a checkpoint."""

import torch
from safetensors.torch import save_file

from ckl.run.experiment import _join_state, _split_state
from ckl.methods.base import build_method
from tests.methods.edit.memory_helpers import (
    edited_and_other_prompts,
    greedy_first,
    load,
    logits,
    stage_context,
)


def test_kv_memory_edits_and_leaves_other_prompts_bit_identical(tiny_stream, tiny_model_dir, accelerator, tmp_path):
    model, tokenizer = load(tiny_model_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    edited, other = edited_and_other_prompts(tiny_stream)
    before_other = logits(model, tokenizer, [p.prompt for p in other])
    assert sum(greedy_first(model, tokenizer, edited)) <= len(edited) // 2

    method = build_method("kv_memory")
    model, _ = method.apply(model, tiny_stream.stages[0], stage_context(tiny_stream, tokenizer, accelerator))
    assert all(greedy_first(model, tokenizer, edited))
    assert torch.equal(logits(model, tokenizer, [p.prompt for p in other]), before_other)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # no weight changed

    data, tensors = _split_state(method.state_dict())
    save_file(tensors, str(tmp_path / "state.safetensors"))
    again = build_method("kv_memory")
    again.load_state_dict(_join_state(data, tmp_path / "state.safetensors"))
    fresh = again.restore(load(tiny_model_dir)[0])
    prompts = [p.prompt for p in edited + other]
    assert torch.equal(logits(fresh, tokenizer, prompts), logits(model, tokenizer, prompts))


def test_a_re_edit_replaces_the_facts_entries(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = load(tiny_model_dir)
    method = build_method("kv_memory")
    ctx = stage_context(tiny_stream, tokenizer, accelerator)
    method.apply(model, tiny_stream.stages[0], ctx)
    n = len(method.ids)
    method.apply(model, tiny_stream.stages[0], ctx)
    assert len(method.ids) == n
