"""SER: the logit-consistency term is zero before the model moves and ignores padding,
and replay+ser keeps the base knowledge's outputs closer to the stage-start model than
replay alone."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.distill.ser import logit_mse
from ckl.model import lm
from tests.methods.distill.test_lwf import _base_knowledge_kl


def test_logit_mse_ignores_padding():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 7, generator=gen)
    student = teacher.clone()
    student[:, 3:] += 1.0  # differs only on padding
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    assert float(logit_mse(student, teacher, mask)) == 0.0
    assert float(logit_mse(student, teacher, torch.ones_like(mask))) == pytest.approx(2 / 5)


def test_replay_with_ser_stays_closer_to_the_stage_start_model_than_replay(tiny_stream, tiny_model_dir, accelerator):
    change = tiny_stream.stages[0]
    kls = {}
    for name, options in (("replay", {}), ("replay+ser", {"ser": {"weight": 1.0}})):
        model, tokenizer = lm.load(tiny_model_dir)
        reference, _ = lm.load(tiny_model_dir)
        method = build_method(name, {"train": {"epochs": 5, "lr": 3e-3}, **options})
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _ = method.apply(model, change, ctx)
        kls[name] = _base_knowledge_kl(model.eval(), reference.eval(), tokenizer, tiny_stream)
    assert 0 < kls["replay+ser"] < 0.8 * kls["replay"], kls  # measured KL 0.068 against 0.298


def test_a_negative_weight_is_refused():
    with pytest.raises(ValueError, match="weight"):
        build_method("replay+ser", {"ser": {"weight": -1}})
