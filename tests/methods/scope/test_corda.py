"""CorDA: the adapter starts as the components of W C that the base knowledge's activations
use least (knowledge-preserved mode), the model is unchanged until it trains, and the base
knowledge is kept better than when the adapter takes the components they use most."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.edit._covariance import covariance_texts
from ckl.model import lm
from ckl.model.scoring import score_probes

LAYER = "transformer.h.1.mlp.c_fc"


def _ctx(stream, tokenizer, accelerator):
    return StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=stream.stages[0])


def _prepared(stream, model_dir, accelerator, mode, r=4):
    model, tokenizer = lm.load(model_dir)
    method = build_method("corda", {"train": {"epochs": 10, "lr": 3e-3}, "corda": {"r": r, "mode": mode}})
    return method, method.parts[0].prepare(model, _ctx(stream, tokenizer, accelerator)), tokenizer


def _inputs(model, tokenizer, texts, layer):
    """Every token's input to `layer` over `texts`, (tokens, d_in)."""
    seen = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt"))
    handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("mode", ["kpm", "ipm"])
def test_the_model_is_unchanged_until_it_trains_and_merges_to_a_plain_model(mode, tiny_stream, tiny_model_dir, accelerator):
    base, _ = lm.load(tiny_model_dir)
    prompt = torch.randint(3, base.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(prompt).logits
    method, model, _ = _prepared(tiny_stream, tiny_model_dir, accelerator, mode)
    adapters = [n for n, p in model.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n in adapters)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n), "not LoRA's zero start: B holds components"
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, expected, atol=2e-4, rtol=1e-4)
    merged = method.parts[0].finish(model, None)
    assert type(merged).__name__ == "GPT2LMHeadModel"
    assert set(dict(merged.named_parameters())) == set(dict(base.named_parameters()))


def test_kpm_reads_the_directions_the_base_knowledge_uses_least_and_keeps_it_better(tiny_stream, tiny_model_dir, accelerator):
    base, tokenizer = lm.load(tiny_model_dir)
    texts = covariance_texts(tiny_stream.base, tiny_stream.relations, (), 64)
    x = _inputs(base, tokenizer, texts, LAYER)
    energy = {}
    for mode in ("kpm", "ipm"):
        _, model, _ = _prepared(tiny_stream, tiny_model_dir, accelerator, mode)
        layer = dict(model.named_modules())[f"base_model.model.{LAYER}"]
        a = layer.lora_A["default"].weight.detach()  # (r, d_in)
        energy[mode] = float((x @ a.T).pow(2).sum() / (a.pow(2).sum() * x.pow(2).sum()))
    # measured: 6.2e-5 of the K0 activations' energy falls in the kpm adapter's row space, 0.070
    # in the ipm adapter's (a random rank-4 space of the 64 input dimensions: 4 / 64 = 0.0625)
    assert energy["kpm"] < 0.05 * energy["ipm"], energy

    invariant = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "invariant"]
    kept = {}
    for mode in ("kpm", "ipm"):
        model, tokenizer = lm.load(tiny_model_dir)
        method = build_method("corda", {"train": {"epochs": 10, "lr": 3e-3}, "corda": {"r": 4, "mode": mode}})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _ = method.apply(model, tiny_stream.stages[0], _ctx(tiny_stream, tokenizer, accelerator))
        kept[mode] = float(score_probes(model, tokenizer, invariant).em.mean())
    # measured (seed 0, one thread): K0 statements 0.75 (kpm) vs 0.30 (ipm); plain LoRA r=4 0.77.
    # Against plain LoRA the trade-off is mixed (40 epochs, r 8: kpm keeps 0.73 vs 0.63 but
    # learns the stage to 0.18 vs 0.32); see docs/methods.md.
    assert kept["kpm"] > kept["ipm"] + 0.2, kept


@pytest.mark.parametrize("bad", [{"r": 0}, {"mode": "fast"}, {"samples": 0}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("corda", {"corda": bad})
