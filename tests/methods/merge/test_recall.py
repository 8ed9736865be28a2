"""RECALL-style merging: each block keeps the share of its update that the similarity of
its representation of known facts gives it, so a block whose representation moved more
keeps less, and the merged model keeps more of K0 than plain fine-tuning."""

import pytest
import torch

from ckl.core.checks import ConfigError
from ckl.data.stream import make_probes
from ckl.methods.base import StageContext, build_method
from ckl.methods.merge.recall import merge_weight
from ckl.model import lm
from ckl.model.layers import parameter_depths
from ckl.model.scoring import score_probes

TRAIN = {"epochs": 10, "lr": 3e-3}


def test_the_trained_model_weighs_less_the_further_its_representation_moved():
    assert merge_weight(1.0, 0.05) == pytest.approx(0.5)
    weights = [merge_weight(s, 0.05) for s in (1.0, 0.99, 0.95, 0.8, 0.0)]
    assert weights == sorted(weights, reverse=True) and weights[-1] < 1e-6
    assert merge_weight(0.95, 0.5) > merge_weight(0.95, 0.05)  # a warmer softmax keeps more of the update


def _train(expression, stream, model_dir, accelerator):
    model, tokenizer = lm.load(model_dir)
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=stream.stages[0])
    method = build_method(expression, {"train": TRAIN})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, stream.stages[0], ctx)
    return method, model, tokenizer


def test_each_block_keeps_its_similarity_weighted_share_and_more_of_k0_survives(tiny_stream, tiny_model_dir, accelerator):
    start = {k: v.clone() for k, v in lm.load(tiny_model_dir)[0].named_parameters()}
    _, naive, tokenizer = _train("naive", tiny_stream, tiny_model_dir, accelerator)
    method, merged, _ = _train("recall", tiny_stream, tiny_model_dir, accelerator)
    lambdas = method.row_notes()["recall_lambdas"]
    depths, layers = parameter_depths(merged)
    assert len(lambdas) == layers and all(0 < x <= 0.5 for x in lambdas)
    end = dict(naive.named_parameters())  # the same training, seed and data: recall only rescales after it
    for name, p in merged.named_parameters():
        lam = lambdas[min(max(depths[name], 0), layers - 1)]
        torch.testing.assert_close(p, start[name] + lam * (end[name] - start[name]), atol=1e-4, rtol=1e-4)
    k0 = make_probes(tiny_stream.invariant(), tiny_stream.relations, "invariant", 0, "base", ("statement",), 10)
    kept = {name: score_probes(m, tokenizer, k0).em.mean() for name, m in (("naive", naive), ("recall", merged))}
    # measured (one thread, default temperature 0.2): lambdas 0.39, 0.29, 0.21 from the first block
    # up (deeper blocks' representations moved more); K0 statements kept 0.933 against naive's 0.417
    assert kept["recall"] > kept["naive"], kept


@pytest.mark.parametrize(("options", "field"), [({"temperature": 0}, "temperature"), ({"samples": 0}, "samples")])
def test_bad_options_are_refused_naming_them(options, field):
    with pytest.raises(ConfigError, match=field):
        build_method("recall", {"recall": options})
