"""DAS soft-masking: scaling each unit's update by 1 - importance makes the units that
matter to K0 move less than the rest; scaling the gradient instead (the paper's place)
does nothing under Adam, which normalises every element's step; importances are in
[0, 1] and merged by maximum across stages."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.penalty.l2 import base_parameters
from ckl.methods.scope.das import importance
from ckl.model import lm


def _train(options, stream, model_dir, accelerator):
    model, tokenizer = lm.load(model_dir)
    before = {k: v.detach().clone() for k, v in base_parameters(model).items()}
    method = build_method("das" if "das" in options else "naive", {"train": {"epochs": 10, "lr": 3e-3}, **options})
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=stream.stages[0], general_text=stream.general_train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, stream.stages[0], ctx)
    return before, base_parameters(model), method


def _important_over_unimportant(before, after, part) -> float:
    """Mean movement of each matrix's 10% most important units over its least important half."""
    high, low = [], []
    for name, imp in part.importance.items():
        moved = (after[name].detach() - before[name]).norm(dim=0 if part.layout[name] else 1)
        order = torch.argsort(imp, descending=True)
        high.append(moved[order[: max(1, len(imp) // 10)]].mean())
        low.append(moved[order[len(imp) // 2:]].mean())
    return float(torch.stack(high).mean() / torch.stack(low).mean())


def test_scaled_updates_slow_the_important_units_and_scaled_gradients_do_not(tiny_stream, tiny_model_dir, accelerator):
    before, after, method = _train({"das": {}}, tiny_stream, tiny_model_dir, accelerator)
    part = method.parts[0]
    assert all(((0 <= v) & (v <= 1)).all() for v in part.importance.values())
    ratios = {"update": _important_over_unimportant(before, after, part)}
    for key, options in (("naive", {}), ("gradient", {"das": {"on": "gradient"}})):
        b, a, _ = _train(options, tiny_stream, tiny_model_dir, accelerator)
        ratios[key] = _important_over_unimportant(b, a, part)
    # measured on the tiny world: 0.336 (update), 1.006 (gradient), 1.009 (plain fine-tuning)
    assert ratios["update"] < 0.6 * ratios["naive"]
    assert abs(ratios["gradient"] - ratios["naive"]) < 0.1 * ratios["naive"]


def test_importance_is_the_papers_normalisation():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0])
    z = (scores - scores.mean()) / scores.std()
    assert torch.allclose(importance(scores), torch.tanh(z).abs())
    assert torch.equal(importance(torch.ones(3)), torch.zeros(3))  # no spread: nothing stands out


def test_options_are_checked():
    with pytest.raises(ValueError, match="on"):
        build_method("das", {"das": {"on": "weights"}})
