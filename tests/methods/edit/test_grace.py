"""GRACE: edits change the edited facts, every other prompt's logits stay bit-identical,
and the codebook survives a checkpoint (state_dict -> safetensors -> restore)."""

import torch
from safetensors.torch import load_file, save_file

from ckl.run.experiment import _join_state, _split_state
from ckl.methods.base import build_method
from tests.methods.edit.memory_helpers import (
    edited_and_other_prompts,
    greedy_first,
    load,
    logits,
    stage_context,
)


def test_grace_edits_and_leaves_other_prompts_bit_identical(tiny_stream, tiny_model_dir, accelerator, tmp_path):
    model, tokenizer = load(tiny_model_dir)
    edited, other = edited_and_other_prompts(tiny_stream)
    before_other = logits(model, tokenizer, [p.prompt for p in other])
    assert sum(greedy_first(model, tokenizer, edited)) <= len(edited) // 2  # the new objects are not known yet

    method = build_method("grace")
    model, stats = method.apply(model, tiny_stream.stages[0], stage_context(tiny_stream, tokenizer, accelerator))
    change = tiny_stream.stages[0]
    assert stats.not_applied == {"learn": len(change.learn), "forget": len(change.forget)}  # reported, not dropped
    assert all(greedy_first(model, tokenizer, edited))
    assert torch.equal(logits(model, tokenizer, [p.prompt for p in other]), before_other)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in load(tiny_model_dir)[0].parameters())

    # checkpoint round trip: tensors through safetensors, codebook back on a fresh model
    data, tensors = _split_state(method.state_dict())
    save_file(tensors, str(tmp_path / "state.safetensors"))
    fresh_method = build_method("grace")
    fresh_method.load_state_dict(_join_state(data, tmp_path / "state.safetensors"))
    fresh = fresh_method.restore(load(tiny_model_dir)[0])
    prompts = [p.prompt for p in edited + other]
    assert torch.equal(logits(fresh, tokenizer, prompts), logits(model, tokenizer, prompts))
    assert set(load_file(str(tmp_path / "state.safetensors"))) == {"grace/keys", "grace/values", "grace/radii"}
