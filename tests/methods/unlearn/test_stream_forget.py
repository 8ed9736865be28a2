"""Streaming unlearning: requests are handled one at a time, each against the model as it
was when the request arrived; the retain term uses only text the model wrote itself (none
naming a subject to forget) and keeps the model closer to where the stream left it."""

import pytest
import torch

from ckl.data.stream import Change
from ckl.methods.base import StageContext, build_method
from ckl.methods.distill.lwf import distillation_kl
from ckl.model import lm
from ckl.model.scoring import score_probes

LR = 3e-4


def _run(stream, model_dir, accelerator, options, spy=None):
    model, tokenizer = lm.load(model_dir)
    start, _ = lm.load(model_dir)
    change = Change(1, forget=stream.stages[0].forget)
    method = build_method("stream_forget", {"train": {"epochs": 10, "lr": LR}, "stream_forget": options})
    part = method.parts[0]
    if spy is not None:
        loss = part.loss

        def spying(model, batch, outputs, step):
            out = loss(model, batch, outputs, step)
            spy.append((part._arrived, {n: p.detach().clone() for n, p in part.reference.named_parameters()}))
            return out

        part.loss = spying
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model, _ = method.apply(model, change, ctx)
    return model, start, tokenizer, part


def test_each_request_is_unlearned_against_the_model_at_its_arrival(tiny_stream, tiny_model_dir, accelerator):
    seen = []
    model, start, _, part = _run(tiny_stream, tiny_model_dir, accelerator, {"objective": "ga", "stop_accuracy": None}, seen)
    requests = [r for r, _ in seen]
    assert requests == sorted(requests) and set(requests) == {0, 1}, "one request after the other"
    first = next(ref for r, ref in seen if r == 0)
    second = next(ref for r, ref in seen if r == 1)
    assert all(torch.equal(first[n], p) for n, p in start.named_parameters()), "request 1's reference: the stage start"
    assert any(not torch.equal(second[n], p) for n, p in start.named_parameters()), "request 2's: where request 1 left the model"
    subjects = {f.subject.lower() for f in tiny_stream.stages[0].forget}
    assert part.self_samples and not any(s in t.lower() for t in part.self_samples for s in subjects)


def test_the_self_written_retain_term_keeps_the_model_closer(tiny_stream, tiny_model_dir, accelerator):
    drift, kept, forgot = {}, {}, {}
    invariant = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "invariant"]
    forget = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "forget1"]
    texts = None
    for weight in (1.0, 0.0):  # the samples the term was given measure both runs' drift
        model, start, tokenizer, part = _run(tiny_stream, tiny_model_dir, accelerator, {"objective": "ga", "stop_accuracy": None, "retain_weight": weight})
        texts = texts or list(part.self_samples)
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            drift[weight] = float(distillation_kl(model(**enc).logits, start(**enc).logits, enc["attention_mask"], 1.0))
        kept[weight] = float(score_probes(model, tokenizer, invariant).em.mean())
        forgot[weight] = float(score_probes(model, tokenizer, forget).em.mean())
    # measured (seed 0, 10 passes of GA per request at lr 3e-4 without the stopping rule): KL
    # to the stage start on the model's own text 0.457 without the term, 0.294 with it at one
    # thread; K0 statements 0.45 and 0.65 at one thread, 0.57 and 0.63 in CI's two (ascent
    # without a stopping rule is sensitive to float order); both forget every requested fact
    assert drift[1.0] < 0.8 * drift[0.0], drift
    assert kept[1.0] > kept[0.0] and forgot[1.0] == 0.0, (kept, forgot)


@pytest.mark.parametrize("bad", [{"mode": "batched"}, {"objective": "kl"}, {"samples": 0}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("stream_forget", {"stream_forget": bad})
