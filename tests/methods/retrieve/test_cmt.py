"""Compressed memory tokens: a stage's memory tokens raise the frozen model's belief in the
stage's facts while every weight of the model stays bit-identical, the memory tokens are
read but never trained as targets, and the memory survives a checkpoint (the saved model
directory stays the plain base model)."""

from __future__ import annotations

import pytest
import torch

from ckl.data.stream import make_probes
from ckl.methods.base import apply_stage, build_method
from ckl.model import lm
from ckl.model.scoring import score_probes
from ckl.train.batching import IGNORE, pack
from tests.methods.edit.memory_helpers import stage_context

OPTIONS = {"epochs": 100, "lr": 0.03}


@pytest.fixture(scope="module")
def memorised(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("cmt", {"cmt": OPTIONS})
    model, stats = apply_stage(method, model, tiny_stream.stages[0], stage_context(tiny_stream, tokenizer, accelerator))
    return method, model, tokenizer, weights, stats


def test_memory_tokens_teach_the_frozen_model_and_leave_every_weight_bit_identical(memorised, tiny_stream, tiny_model_dir):
    method, model, tokenizer, weights, stats = memorised
    assert all(torch.equal(v, weights[k]) for k, v in lm.load(tiny_model_dir)[0].state_dict().items())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items() if k in weights)
    assert stats.trainable_params == OPTIONS.get("tokens", 16) * model.get_input_embeddings().weight.shape[1]
    assert stats.not_applied == {"forget": len(tiny_stream.stages[0].forget)}
    frozen = lm.load(tiny_model_dir)[0]
    new = make_probes(list(tiny_stream.stages[0].learn), tiny_stream.relations, "stage1", 1, "learn", ("statement",), 10)
    asked = method.transform_probes(new)
    assert all(p.prompt.startswith("<cmt0.0>") and p.prompt.endswith(q.prompt) for p, q in zip(asked, new))
    before, after = score_probes(frozen, tokenizer, new).logprob.mean(), score_probes(model, tokenizer, asked).logprob.mean()
    # measured (one thread): the gold answer's log-probability -8.68 frozen, -6.03 through the
    # memory (exact match stays low: a frozen three-layer model reads little from 16 tokens)
    assert after > before + 1.5, (before, after)


def test_memory_tokens_are_read_but_never_a_training_target(memorised):
    _, _, tokenizer, _, _ = memorised
    memory = tokenizer.convert_tokens_to_ids(["<cmt0.0>", "<cmt0.1>"])
    ids, mask, labels = pack(tokenizer, ["<cmt0.0><cmt0.1> a fact.", "another fact."], 64)
    assert set(memory) <= set(ids[mask == 1].tolist())
    assert not set(memory) & set(labels[labels != IGNORE].tolist())
    assert tokenizer.eos_token_id in labels.tolist()[0]  # the end of a document stays a target


def test_the_memory_survives_a_checkpoint_and_the_saved_model_is_the_plain_base(memorised, tiny_stream, tmp_path):
    method, model, tokenizer, weights, _ = memorised
    lm.save(model, tokenizer, tmp_path / "ckpt")
    reloaded, reloaded_tokenizer = lm.load(tmp_path / "ckpt")
    assert set(reloaded.state_dict()) == set(weights)  # no memory tensors in the model directory
    again = build_method("cmt", {"cmt": OPTIONS})
    again.load_state_dict(method.state_dict())
    reloaded = again.restore(reloaded)
    probes = tiny_stream.probes(kinds=("statement",))
    got = score_probes(reloaded, reloaded_tokenizer, again.transform_probes(probes))
    want = score_probes(model, tokenizer, method.transform_probes(probes))
    assert (got.em == want.em).all() and got.logprob == pytest.approx(want.logprob, abs=1e-5)
    damaged = method.state_dict()
    damaged["cmt"]["w.banks.0"] = damaged["cmt"]["w.banks.0"][:3]
    broken = build_method("cmt", {"cmt": OPTIONS})
    broken.load_state_dict(damaged)
    with pytest.raises(ValueError, match="damaged"):
        broken.restore(lm.load(tmp_path / "ckpt")[0])
