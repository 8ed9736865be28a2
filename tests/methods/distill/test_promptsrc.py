"""PromptSRC-style self-regulation: the stage ends exactly at the Gaussian-weighted average
of the weights each epoch reached, and the agreement term keeps the model closer to the
stage-start model than plain fine-tuning."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.distill.promptsrc import PromptSrc, PromptSrcConfig, epoch_weight
from tests.methods.distill.test_lwf import stage_kls


def test_the_stage_ends_at_the_gaussian_weighted_average_of_the_epochs_weights(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
    ctx.epochs = 4
    part = PromptSrc(PromptSrcConfig(weight=0.0, mean=0.5, std=0.25))
    part.prepare(model, ctx)
    ends = []
    for epoch in range(4):
        ctx.epoch = epoch
        part.select_facts([], ctx)  # the loop renders epoch `epoch`'s documents
        with torch.no_grad():  # "training" in this epoch: every weight moves
            for p in model.parameters():
                p.add_(0.1 * (epoch + 1))
        ends.append([p.detach().clone() for p in model.parameters()])
    part.finish(model, ctx)
    w = torch.tensor([epoch_weight(e, 4, 0.5, 0.25) for e in (1, 2, 3, 4)])
    assert int(w.argmax()) == 1  # epoch 2 of 4 is the centre
    for k, p in enumerate(model.parameters()):
        expected = sum(wi * end[k] for wi, end in zip(w, ends)) / w.sum()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-5)


def test_agreement_keeps_the_model_closer_to_the_stage_start_than_plain_fine_tuning(tiny_stream, tiny_model_dir, accelerator):
    kls = stage_kls({"naive": {}, "promptsrc": {}}, tiny_stream, tiny_model_dir, accelerator)
    assert 0 < kls["promptsrc"] < 0.8 * kls["naive"], kls  # measured (one thread): 0.136 against 0.506


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="std"):
        build_method("promptsrc", {"promptsrc": {"std": 0}})
