import math
from types import SimpleNamespace

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.penalty.recadam import RecAdam, RecAdamConfig, task_weight


@pytest.mark.parametrize("step", [0, 5, 10, 20, 100])
def test_task_weight_is_the_sigmoid_schedule(step):
    assert task_weight(step, 0.5, 10) == pytest.approx(1 / (1 + math.exp(-0.5 * (step - 10))))


def test_task_weight_is_half_at_t0_and_survives_overflow():
    assert task_weight(10, 0.5, 10) == 0.5
    assert task_weight(0, 10.0, 1000) == 0.0


def test_pull_shrinks_over_steps_and_total_is_the_papers_objective(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = RecAdam(RecAdamConfig(gamma=1.0, k=0.5, t0=10))
    part.prepare(model, StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    pull = 0.5 * sum(float(p.numel()) * 1e-4 for p in model.parameters())
    task = torch.tensor(2.0)
    outputs = SimpleNamespace(loss=task)
    totals = []
    for step in (0, 5, 10, 20, 40):
        lam = task_weight(step, 0.5, 10)
        total = (task + part.loss(model, {}, outputs, step)).item()
        assert total == pytest.approx(lam * 2.0 + (1 - lam) * pull, rel=1e-3)
        totals.append(part.loss(model, {}, SimpleNamespace(loss=torch.tensor(0.0)), step).item())
    assert all(a > b for a, b in zip(totals, totals[1:]))  # the pull term alone shrinks


def test_recadam_applies_and_moves_less_than_naive(tiny_stream, tiny_model_dir, accelerator):
    from ckl.model import lm

    distances = {}
    for name, options in (("naive", {}), ("recadam", {"recadam": {"t0": 5, "k": 0.5}})):
        model, tokenizer = lm.load(tiny_model_dir)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        method = build_method(name, {"train": {"epochs": 10, "lr": 3e-3}, **options})
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
        model, _ = method.apply(model, tiny_stream.stages[0], ctx)
        distances[name] = sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in model.named_parameters())
    assert distances["recadam"] < distances["naive"], distances


@pytest.mark.parametrize("bad", [{"gamma": -1.0}, {"k": 0}, {"t0": -3}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("recadam", {"recadam": bad})
