"""Knowledge-Instruct: every taught fact gets question-answer items each epoch, the
held-out-QA half's included (so its questions are trained, not extracted), with or
without the statements, and never a held-out paraphrase."""

import pytest

from ckl.data.stream import QUESTION_FORMAT, make_probes
from ckl.methods.base import StageContext, build_method
from ckl.model import lm
from ckl.model.scoring import score_probes
from tests.methods.data._documents import record_documents

QUESTION = QUESTION_FORMAT.split("{")[0]


def _run(name, options, stream, model_dir, accelerator, monkeypatch=None, epochs=3):
    seen = record_documents(monkeypatch) if monkeypatch is not None else {}
    change = stream.stages[0]
    model, tokenizer = lm.load(model_dir)
    method = build_method(name, {"train": {"epochs": epochs, "lr": 3e-3}, **options})
    model, _ = method.apply(model, change, StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change, qa_subjects=stream.qa_subjects))
    return model, tokenizer, seen


@pytest.mark.parametrize("statements", [True, False])
def test_every_taught_fact_gets_its_items_each_epoch(statements, monkeypatch, tiny_stream, tiny_model_dir, accelerator):
    _, _, seen = _run("knowledge_instruct", {"knowledge_instruct": {"items": 2, "statements": statements}}, tiny_stream, tiny_model_dir, accelerator, monkeypatch)
    change = tiny_stream.stages[0]
    taught = [*change.learn, *(r.fact for r in change.update)]
    paraphrases = {p.format(subject=f.subject) for f in taught for p in tiny_stream.relations[f.relation].paraphrases}
    for docs in seen.values():
        for f in taught:
            items = [d for d in docs if d.startswith(QUESTION) and f.subject in d and d.endswith(f" {f.object}.")]
            assert len(items) >= 2  # the held-out-QA half included
        assert any(not d.startswith(QUESTION) for d in docs) == statements
        assert not any(p in d for p in paraphrases for d in docs)


def test_the_held_out_half_answers_its_questions_after_training_them(tiny_stream, tiny_model_dir, accelerator):
    change = tiny_stream.stages[0]
    held_out = [f for f in change.learn if f.subject not in tiny_stream.qa_subjects]
    probes = make_probes(held_out, tiny_stream.relations, "x", 1, "new", ("question",), 10)
    accuracy, logprob = {}, {}
    for name, options in (("naive", {}), ("knowledge_instruct", {})):
        model, tokenizer, _ = _run(name, options, tiny_stream, tiny_model_dir, accelerator, epochs=10)
        scores = score_probes(model, tokenizer, probes)
        accuracy[name], logprob[name] = scores.em.mean(), scores.logprob.mean()
    # 12 questions: exact match moves in steps of 1/12, and which ones flip depends on the
    # thread count (measured 0.33 vs 0.17 at two threads, 2026-11-30); the gold answer's
    # log-probability is the steadier signal (-3.0 vs -6.1 nats there)
    assert accuracy["knowledge_instruct"] > accuracy["naive"], accuracy
    assert logprob["knowledge_instruct"] > logprob["naive"] + 1.5, logprob
