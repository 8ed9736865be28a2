"""Token forgetting: the threshold splits the stage's label tokens at the configured share,
the term turns the loop's loss into "positive tokens' loss - lambda * negative tokens'",
and after a stage the negative tokens are less likely than under plain fine-tuning while
the positive ones are learned as well."""

import random

import pytest
import torch

from ckl.data.stream import render_documents
from ckl.methods.base import StageContext, build_method
from ckl.methods.penalty.token_forget import influence, token_losses
from ckl.model import lm
from ckl.train.batching import pack


def _batch(tokenizer, stream):
    docs = render_documents(stream.stages[0].taught(), stream.relations, random.Random(1))
    input_ids, mask, labels = pack(tokenizer, docs, 128)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _train(name, options, stream, model_dir, accelerator, keep=None):
    model, tokenizer = lm.load(model_dir)
    method = build_method(name, {"train": {"epochs": 6, "lr": 3e-3}, **options})
    if keep is not None:
        part = method.parts[0]
        finish = part.finish

        def keeping(model, ctx):
            keep.update(start=part.start, reference=part.reference, threshold=part.threshold, ctx=part.ctx)
            return finish(model, ctx)

        part.finish = keeping
    change = stream.stages[0]
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change, qa_subjects=stream.qa_subjects)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, change, ctx)
    return model.eval(), tokenizer


def test_negative_tokens_end_less_likely_than_under_plain_fine_tuning_and_positive_ones_are_learned(tiny_stream, tiny_model_dir, accelerator):
    keep = {}
    forgot, tokenizer = _train("token_forget", {"token_forget": {"positive": 0.7}}, tiny_stream, tiny_model_dir, accelerator, keep)
    naive, _ = _train("naive", {}, tiny_stream, tiny_model_dir, accelerator)
    batch = _batch(tokenizer, tiny_stream)
    score, valid = influence(keep["start"], keep["reference"], batch)
    positive = valid & (score >= keep["threshold"])
    negative = valid & ~positive
    assert 0.2 < negative.sum() / valid.sum() < 0.4  # about 1 - positive of the tokens
    with torch.no_grad():
        ce = {name: token_losses(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])[0]
              for name, m in (("forget", forgot), ("naive", naive))}
        start_ce = token_losses(keep["start"].logits(batch), batch["labels"])[0]
    mean = lambda t, m: float(t[m].mean())
    # measured (paper's lambda 0.25, one thread): positive tokens 5.50 at the start -> 2.11 (naive 2.05);
    # negative tokens 1.00 -> 5.07 (naive 1.43)
    assert mean(ce["forget"], negative) > mean(ce["naive"], negative) + 0.5, "the negative tokens were unlearned"
    assert mean(ce["forget"], positive) < 0.5 * mean(start_ce, positive), "the positive tokens were learned"
    assert mean(ce["forget"], positive) < 1.1 * mean(ce["naive"], positive), "about as well as plain fine-tuning learns them"


def test_the_term_makes_the_total_loss_the_papers_objective(tiny_stream, tiny_model, accelerator):
    from ckl.methods.penalty.token_forget import TokenForget, TokenForgetConfig

    model, tokenizer = tiny_model
    part = TokenForget(TokenForgetConfig(scale=0.5, reference_epochs=1))
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
    part.prepare(model, ctx)
    ctx.epoch, ctx.epochs = 3, 6  # lambda = 0.5 * 3 / 6
    batch = _batch(tokenizer, tiny_stream)
    outputs = model(**batch)
    total = outputs.loss + part.loss(model, batch, outputs, 0)
    score, valid = influence(part.start, part.reference, batch)
    ce, _ = token_losses(outputs.logits, batch["labels"])
    positive = valid & (score >= part.threshold)
    negative = valid & ~positive
    expected = ce[positive].mean() - 0.25 * ce[negative].mean()
    assert float(total) == pytest.approx(float(expected), rel=1e-5)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="positive"):
        build_method("token_forget", {"token_forget": {"positive": 0}})
    with pytest.raises(ValueError, match="reference_epochs"):
        build_method("token_forget", {"token_forget": {"reference_epochs": 0}})
