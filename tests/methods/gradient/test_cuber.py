"""CUBER-style backward transfer: per layer, a conflicting step loses its component along
the memory gradient, a strongly agreeing one gains more of it; on the tiny model every
layer's filtered step then lowers the memory loss (to first order) where the raw step
raised it in some layers, and lowers it more in total than the raw step or A-GEM's."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.gradient.agem import flat_grad, memory_gradient, project_agem, trainable
from ckl.methods.gradient.cuber import Cuber, CuberConfig, layerwise_transfer
from tests.methods.gradient.test_agem import _stage_gradient


def test_the_three_cases():
    r = torch.tensor([1.0, 0.0, 0.0])
    blocked, case = layerwise_transfer(torch.tensor([-1.0, 2.0, 0.0]), r, trust=0.1, transfer=0.5)
    assert case == "blocked" and torch.allclose(blocked, torch.tensor([0.0, 2.0, 0.0]))
    transferred, case = layerwise_transfer(torch.tensor([1.0, 1.0, 0.0]), r, trust=0.1, transfer=0.5)
    assert case == "transferred" and torch.allclose(transferred, torch.tensor([1.5, 1.0, 0.0]))
    weak = torch.tensor([0.05, 1.0, 0.0])  # cosine 0.05 < trust
    kept, case = layerwise_transfer(weak, r, trust=0.1, transfer=0.5)
    assert case == "kept" and torch.equal(kept, weak)


def test_every_layer_step_stops_raising_the_memory_loss_and_the_total_falls_faster(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
    part = Cuber(CuberConfig())
    part.prepare(model, ctx)
    _stage_gradient(model, tokenizer, tiny_stream)
    params = trainable(model)
    raw = flat_grad(params)
    r = memory_gradient(model, part.memory_batch(0), params)
    sizes = [p.numel() for p in params]
    per_layer = lambda g: torch.stack([torch.dot(a, b) for a, b in zip(g.split(sizes), r.split(sizes))])
    assert (per_layer(raw) < 0).sum() > 0, "some layers' raw steps raise the memory loss"
    part.filter_gradients(model, 0)
    filtered = flat_grad(params)
    assert (per_layer(filtered) >= -1e-6 * r.norm() * filtered.norm()).all(), "no layer's step raises it any more"
    assert part.cases["blocked"] > 0 and part.cases["transferred"] > 0
    agem = project_agem(raw, r)
    # first-order fall of the memory loss for a step -lr * g is lr * g . r
    assert float(torch.dot(filtered, r)) > max(float(torch.dot(raw, r)), float(torch.dot(agem, r)))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="trust"):
        build_method("cuber", {"cuber": {"trust": 2}})
    with pytest.raises(ValueError, match="transfer"):
        build_method("cuber", {"cuber": {"transfer": -1}})
