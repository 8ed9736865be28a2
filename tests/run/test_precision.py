"""`precision: bf16`: mixed-precision training and scoring, checked against fp32 within
tolerance on the tiny model (bf16 keeps 8 bits of mantissa: answers agree, not bits)."""

import copy

import pytest
import torch

from ckl.core.errors import InputError
from ckl.run.config import ExperimentConfig
from ckl.core.distributed import precision
from ckl.run.experiment import evaluate_row
from ckl.train.loop import TrainConfig, train


def test_bf16_scoring_agrees_with_fp32(tiny_model, tiny_stream, accelerator):
    model, tokenizer = tiny_model
    probes = tiny_stream.probes()
    with precision("fp32", accelerator):
        fp32, ppl32 = evaluate_row(model, tokenizer, probes, tiny_stream.general_heldout, 64, accelerator)
    with precision("bf16", accelerator):
        bf16, ppl16 = evaluate_row(model, tokenizer, probes, tiny_stream.general_heldout, 64, accelerator)
    agree = sum(a.em == b.em for a, b in zip(fp32, bf16)) / len(probes)
    assert agree >= 0.95 and abs(ppl16 - ppl32) / ppl32 < 0.05
    assert any(abs(a.logprob - b.logprob) > 1e-4 for a, b in zip(fp32, bf16))  # it really ran in bf16


def test_bf16_training_follows_fp32(tiny_stream, accelerator):
    from ckl.model import lm

    docs = [f"{f.subject} lives in {f.object} ." for f in tiny_stream.base[:40]]
    tokenizer = lm.make_tokenizer(docs)
    start = lm.tiny_model(tokenizer, lm.TinyModelConfig(n_layer=2, n_embd=64, n_head=2), seed=0)

    def loss(model) -> float:  # in fp32, on every document
        batch = tokenizer(docs, return_tensors="pt", padding=True)
        with torch.no_grad():
            return float(model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100)).loss)

    after = {}
    for name in ("fp32", "bf16"):
        model = copy.deepcopy(start)
        with precision(name, accelerator):
            train(model, tokenizer, lambda e: docs, TrainConfig(epochs=3, lr=1e-3, batch_size=4), accelerator, seed=0)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed precision: the weights stay fp32
        after[name] = loss(model)
    # measured (one thread): 3.72 (fp32) and 3.87 (bf16) from 4.26; bf16 learns a little slower on this tiny model
    assert after["bf16"] < loss(start) - 0.2 and after["bf16"] < 1.1 * after["fp32"] + 0.05


def test_precision_is_checked():
    with pytest.raises(InputError) as err:
        ExperimentConfig.from_dict({"world": {"people": 12}, "precision": "fp16", "methods": [{"name": "naive"}]})
    assert err.value.field == "precision"
