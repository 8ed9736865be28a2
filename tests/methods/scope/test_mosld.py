"""MoSLD: the experts of a layer share one up-projection (fewer parameters than LoRAMoE by
(E - 1) * d_out * r per layer) and keep their own down-projections; attaching them leaves
the outputs unchanged; the shared matrix's dropout acts in training only; after a stage
the shared up-projection and every expert's down-projection have learned, the base has not,
and the experts come back from a checkpoint."""

import pytest
import torch

from ckl.methods.base import build_method
from ckl.methods.scope.loramoe import LoraExperts
from ckl.methods.scope.mosld import Mosld, MosldConfig, SharedUpExperts
from tests.methods.scope.test_loramoe import _ctx, _prompt, checkpoint_round_trip


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_the_experts_share_one_up_projection_and_attach_without_changing_outputs(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        before = model(prompt).logits
    _, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    part = Mosld(MosldConfig(experts=4, r=8))
    model = part.prepare(model, ctx)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, before, atol=0, rtol=0)
    for layer in part.module.layers.values():
        experts, r, d_in = layer.A.shape
        d_out = layer.B.shape[0]
        dense = LoraExperts(d_in, d_out, experts, r, 1.0)  # LoRAMoE's experts for the same layer
        assert _count(dense) - _count(layer) == (experts - 1) * d_out * r
    assert all(layer.B.dim() == 2 for layer in part.module.layers.values())


def test_the_shared_dropout_acts_in_training_only():
    torch.manual_seed(0)
    layer = SharedUpExperts(6, 5, experts=3, r=2, scale=1.0, dropout=0.5)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(4, 6)
    layer.eval()
    first, gates = layer(x)
    expected = torch.einsum("bi,eri,be->br", x, layer.A, gates) @ layer.B.T
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(layer(x)[0], first)
    layer.train()
    assert not torch.allclose(layer(x)[0], layer(x)[0])


def test_a_stage_trains_the_shared_and_own_projections_and_survives_a_checkpoint(tiny_stream, tiny_model, accelerator, tmp_path):
    model, tokenizer = tiny_model
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    change, ctx = _ctx(tiny_stream, tokenizer, accelerator)
    method = build_method("mosld", {"train": {"epochs": 2, "lr": 3e-3}})
    model, _ = method.apply(model, change, ctx)
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], base[n]) for n in base), "the base model stays frozen"
    for layer in method.parts[0].module.layers.values():
        assert layer.B.abs().sum() > 0
    model.eval()
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        trained = model(prompt).logits
    restored = checkpoint_round_trip("mosld", method, model, tokenizer, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(restored(prompt).logits, trained)


def test_bad_dropout_is_refused():
    with pytest.raises(ValueError, match="shared_dropout"):
        build_method("mosld", {"mosld": {"shared_dropout": 1.0}})
