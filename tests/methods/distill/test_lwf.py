import random

import pytest
import torch

from ckl.model import lm
from ckl.methods.base import StageContext, build_method
from ckl.methods.distill.lwf import Lwf, LwfConfig, distillation_kl
from ckl.data.stream import render_documents
from ckl.train.batching import pack


def _stage_batch(tokenizer, stream):
    docs = render_documents(stream.stages[0].taught(), stream.relations, random.Random(0))
    input_ids, mask, labels = pack(tokenizer, docs, 128)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def test_distillation_term_is_zero_at_the_first_step_and_positive_once_the_student_moves(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
    part = Lwf(LwfConfig())
    part.prepare(model, ctx)
    batch = _stage_batch(tokenizer, tiny_stream)
    outputs = model(**batch)
    first = part.loss(model, batch, outputs, 0)
    assert abs(float(first.detach())) < 1e-6
    outputs.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-2 * p.grad
    assert float(part.loss(model, batch, model(**batch), 1).detach()) > 1e-4
    part.finish(model, ctx)
    assert part.teacher is None


def test_distillation_ignores_padding_positions():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 7, generator=gen)
    student = teacher.clone()
    student[:, 3:] += torch.randn(2, 2, 7, generator=gen)  # differs only on padding
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    assert float(distillation_kl(student, teacher, mask, 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(distillation_kl(student, teacher, torch.ones_like(mask), 2.0)) > 0


def _base_knowledge_kl(model, reference, tokenizer, stream):
    """Mean KL(reference || model) of next-token distributions over base-knowledge prompts."""
    prompts = [p.prompt for p in stream.probes(kinds=("statement",)) if p.cohort == "invariant"]
    encoded = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        student = model(**encoded).logits
        teacher = reference(**encoded).logits
    return float(distillation_kl(student, teacher, encoded["attention_mask"], 1.0))


def stage_kls(expressions: dict, tiny_stream, tiny_model_dir, accelerator) -> dict:
    """For each method (expression -> options), the base-knowledge KL to the stage-start model
    after the tiny world's first stage (5 epochs, lr 3e-3, seed 0)."""
    change = tiny_stream.stages[0]
    kls = {}
    for name, options in expressions.items():
        model, tokenizer = lm.load(tiny_model_dir)
        reference, _ = lm.load(tiny_model_dir)
        method = build_method(name, {"train": {"epochs": 5, "lr": 3e-3}, **options})
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _ = method.apply(model, change, ctx)
        kls[name] = _base_knowledge_kl(model.eval(), reference.eval(), tokenizer, tiny_stream)
    return kls


def test_lwf_stays_closer_to_the_stage_start_model_on_base_knowledge_than_naive(tiny_stream, tiny_model_dir, accelerator):
    kls = stage_kls({"naive": {}, "lwf": {}}, tiny_stream, tiny_model_dir, accelerator)
    assert 0 < kls["lwf"] < kls["naive"], kls


def test_lwf_config_rejects_a_zero_temperature():
    with pytest.raises(ValueError, match="temperature"):
        build_method("lwf", {"lwf": {"temperature": 0}})
