"""PLwF: the knowledge space holds every earlier stage's model (so after two stages the
model stays closer to the base model than under LwF, which distils only the latest one),
it survives a checkpoint, and credit assignment leaves a step that pulls against neither
the new data nor the distillation."""

import copy

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.distill.plwf import Plwf, PlwfConfig, deconflict
from ckl.model import lm
from tests.methods.distill.test_lwf import _base_knowledge_kl, _stage_batch


def test_deconflict_removes_the_conflict_and_leaves_agreeing_gradients_alone():
    rest = torch.tensor([1.0, 0.0, 2.0])
    agreeing = torch.tensor([0.5, 1.0, 0.0])
    summed, projected = deconflict(rest, agreeing)
    assert not projected and torch.equal(summed, rest + agreeing)
    conflicting = torch.tensor([-6.0, 1.0, -3.0])
    summed, projected = deconflict(rest, conflicting)
    assert projected
    assert float(torch.dot(summed, rest)) >= -1e-6 and float(torch.dot(summed, conflicting)) >= -1e-6
    assert float(torch.dot(rest + conflicting, rest)) * float(torch.dot(rest + conflicting, conflicting)) < 0  # the plain sum worked against one


def _two_stages(name, options, tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method(name, {"train": {"epochs": 5, "lr": 3e-3}, **options})
    for change in tiny_stream.stages:
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, change.stage, 0, tokenizer, accelerator, change=change)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(change.stage)
            model, _ = method.apply(model, change, ctx)
    return model, tokenizer, method


def test_plwf_keeps_the_base_model_in_its_knowledge_space_where_lwf_lets_it_fade(tiny_stream, tiny_model_dir, accelerator):
    assert len(tiny_stream.stages) == 2
    kls = {}
    for name, options in (("lwf", {"lwf": {"weight": 2.0}}), ("plwf", {"plwf": {"weight": 2.0, "credit_assignment": False}})):
        model, tokenizer, method = _two_stages(name, options, tiny_stream, tiny_model_dir, accelerator)
        reference, _ = lm.load(tiny_model_dir)
        kls[name] = _base_knowledge_kl(model.eval(), reference.eval(), tokenizer, tiny_stream)
        if name == "plwf":
            assert len(method.parts[0].snapshots) == 2  # the base model and the model after stage 1
    assert 0 < kls["plwf"] < 0.9 * kls["lwf"], kls  # measured (one thread): 0.147 against 0.237


def test_the_teachers_survive_a_checkpoint(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    original = copy.deepcopy(model).eval()
    part = Plwf(PlwfConfig(credit_assignment=False))
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
    part.prepare(model, ctx)
    part.finish(model, ctx)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    restored = Plwf(PlwfConfig(credit_assignment=False))
    restored.load_state_dict(part.state_dict())
    restored.prepare(model, ctx)
    assert len(restored.teachers) == 2
    batch = _stage_batch(tokenizer, tiny_stream)
    base_logits = restored.teachers[0].logits(batch)
    current = restored.teachers[1].logits(batch)
    assert not torch.allclose(base_logits, current)
    with torch.no_grad():
        assert torch.allclose(base_logits, original(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, atol=1e-5)


def test_credit_assignment_steps_never_pull_against_either_objective(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = Plwf(PlwfConfig(weight=5.0))
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
    part.prepare(model, ctx)
    with torch.no_grad():  # move the student off its teacher so the distillation pulls
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = _stage_batch(tokenizer, tiny_stream)
    params = [p for p in model.parameters() if p.requires_grad]
    outputs = model(**batch)
    term = part.loss(model, batch, outputs, 0)
    distill = part.distill_grad.clone()
    (outputs.loss + term).backward()
    rest = torch.cat([p.grad.reshape(-1) for p in params]) - distill
    part.filter_gradients(model, 0)
    step = torch.cat([p.grad.reshape(-1) for p in params])
    assert float(torch.dot(step, rest)) >= -1e-4 * float(rest.norm() * step.norm())
    assert float(torch.dot(step, distill)) >= -1e-4 * float(distill.norm() * step.norm())
    assert part.projected == int(float(torch.dot(rest, distill)) < 0)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="max_teachers"):
        build_method("plwf", {"plwf": {"max_teachers": -1}})
    with pytest.raises(ValueError, match="credit_assignment"):
        build_method("plwf", {"plwf": {"credit_assignment": "yes"}})
