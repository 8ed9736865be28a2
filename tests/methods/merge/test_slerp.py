"""Slerp (WARP's merge and LITI): the spherical merge keeps the norm a linear average
loses, the first stage (no earlier task vector) merges linearly, a second stage merges
the old and new task vectors on the sphere, eta pulls towards the initial model, and the
initial weights survive a checkpoint."""

import math

import pytest
import torch

from ckl.methods.base import build_method
from ckl.methods.merge.slerp import slerp


def test_slerp_keeps_the_norm_that_a_linear_average_loses():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5)] * 2)) and mid.norm() == pytest.approx(1.0)
    assert ((a + b) / 2).norm() == pytest.approx(math.sqrt(0.5))  # what averaging keeps
    assert torch.equal(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-7)
    zero = torch.zeros(2)
    assert torch.allclose(slerp(zero, b, 0.25), 0.25 * b)  # linear when a vector is zero
    assert torch.allclose(slerp(a, 3 * a, 0.5), 2 * a)  # and when they are parallel


def _moved(model, seed):
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in model.parameters():
            p.add_(torch.randn_like(p))


def test_two_stages_merge_old_and_new_task_vectors_on_the_sphere(tiny_model):
    model, _ = tiny_model
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    part = build_method("slerp", {"slerp": {"t": 0.5, "eta": 0.8}}).parts[0]
    part.prepare(model, None)
    _moved(model, 0)
    first_end = {n: p.detach().clone() for n, p in model.named_parameters()}
    part.finish(model, None)
    for n, p in model.named_parameters():  # stage 1: tau_old = 0, so 0.8 * (0.5 * tau_new)
        torch.testing.assert_close(p, init[n] + 0.8 * 0.5 * (first_end[n] - init[n]))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    part.prepare(model, None)
    _moved(model, 1)
    end = {n: p.detach().clone() for n, p in model.named_parameters()}
    part.finish(model, None)
    for n, p in model.named_parameters():
        expected = init[n] + 0.8 * slerp(start[n] - init[n], end[n] - init[n], 0.5)
        torch.testing.assert_close(p, expected)
    name = next(n for n, _ in model.named_parameters() if n.endswith("c_fc.weight"))
    old, new = start[name] - init[name], end[name] - init[name]
    merged = (dict(model.named_parameters())[name] - init[name]) / 0.8
    assert merged.norm() > ((old + new) / 2).norm() * 1.05  # the sphere keeps more than the average
    again = build_method("slerp").parts[0]
    again.load_state_dict(part.state_dict())
    assert all(torch.equal(again.init[n], init[n]) for n in init)


def test_options_are_checked():
    for bad in ({"t": 1.5}, {"eta": -0.1}, {"t": True}):
        with pytest.raises(ValueError):
            build_method("slerp", {"slerp": bad})
