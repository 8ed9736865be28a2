"""KORE's constraint: the block maps' outputs on the old knowledge's inputs move a small
fraction of what plain fine-tuning moves them, because every update is projected into the
null space of those inputs; the projector is right; the covariance survives a checkpoint."""

import pytest
import torch

from ckl.data.stream import render_documents
from ckl.methods.base import StageContext, build_method
from ckl.methods.penalty.kore import null_projector
from ckl.methods.penalty.l2 import base_parameters
from ckl.model import lm
from ckl.train.batching import pack


def test_the_projector_removes_the_kept_directions():
    torch.manual_seed(0)
    x = torch.randn(200, 3) @ torch.tensor([[3.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 1.0, 0]])  # inputs in the first 3 of 4 dims
    q = null_projector(x.T @ x, 0.999)
    assert torch.allclose(x @ q, torch.zeros_like(x), atol=1e-4)  # nothing of the old inputs passes
    assert torch.allclose(q[3, 3], torch.tensor(1.0), atol=1e-5)  # the unused direction is free


def test_outputs_on_the_old_inputs_move_far_less_than_under_plain_fine_tuning(tiny_stream, tiny_model_dir, accelerator):
    moved = {}
    for name in ("naive", "kore"):
        model, tokenizer = lm.load(tiny_model_dir)
        before = {k: v.detach().clone() for k, v in base_parameters(model).items()}
        method = build_method(name, {"train": {"epochs": 10, "lr": 3e-3}})
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _ = method.apply(model, tiny_stream.stages[0], ctx)
        if name == "kore":
            part = method.parts[0]
        moved[name] = (before, base_parameters(model))
    # the first block's attention input map, on K0's inputs to it (its input is the embedded K0 text)
    name = next(n for n in part.cov if n.endswith("h.0.attn.c_attn.weight"))
    model, tokenizer = lm.load(tiny_model_dir)
    docs = render_documents(list(tiny_stream.base), tiny_stream.relations, __import__("random").Random(0), qa_subjects=tiny_stream.qa_subjects)
    ids, mask, _ = pack(tokenizer, docs, 128)
    seen = []
    hook = model.transformer.h[0].attn.c_attn.register_forward_pre_hook(lambda m, a: seen.append(a[0][mask.bool()]))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    hook.remove()
    x = seen[0]  # (tokens, in)
    change = {k: float((x @ (after[name].detach() - before[name])).norm()) for k, (before, after) in moved.items()}  # Conv1D: x @ W
    assert change["kore"] < 0.3 * change["naive"], change  # measured 1.50 against 51.4 (one thread)


def test_adapters_are_refused_and_options_checked():
    with pytest.raises(ValueError, match="cannot be combined"):
        build_method("lora+kore")
    with pytest.raises(ValueError, match="energy"):
        build_method("kore", {"kore": {"energy": 1.0}})
