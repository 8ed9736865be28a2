"""PANDA-style transfer: each stage's prompt starts from the previous one and, with the
distillation term, the model reading the new prompt stays closer to what it predicted
with the previous prompt than without it; only the newest prompt is read."""

import pytest
import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError
from ckl.methods.base import apply_stage, build_method
from ckl.model import lm
from tests.methods.edit.memory_helpers import stage_context


def _two_stages(alpha, tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("panda", {"panda": {"epochs": 20, "lr": 0.03, "alpha": alpha}})
    for j in (1, 2):
        model, _ = apply_stage(method, model, tiny_stream.stages[j - 1], stage_context(tiny_stream, tokenizer, accelerator, j))
    return method, model, tokenizer


@torch.no_grad()
def _drift(method, model, tokenizer, texts) -> float:
    """KL(model reading prompt 0 || model reading prompt 1) over the texts' tokens."""
    kls = []
    for text in texts:
        logits = []
        for bank in method.banks:
            ids = tokenizer("".join(bank) + " " + text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            logits.append(model(input_ids=ids).logits[0, len(bank):].float())
        kls.append(F.kl_div(F.log_softmax(logits[1], -1), F.log_softmax(logits[0], -1), log_target=True, reduction="none").sum(-1).mean())
    return float(torch.stack(kls).mean())


def test_distillation_keeps_the_new_prompt_close_to_the_previous_one(tiny_stream, tiny_model_dir, accelerator):
    texts = [f"{f.subject} was born in" for f in tiny_stream.stages[0].learn][:8]
    drift = {}
    for alpha in (0.0, 5.0):
        method, model, tokenizer = _two_stages(alpha, tiny_stream, tiny_model_dir, accelerator)
        assert len(method.banks) == 2 and method.shown() == [1]
        assert method.transform_probes(tiny_stream.probes(kinds=("statement",))[:1])[0].prompt.startswith("".join(method.banks[1]) + " ")
        drift[alpha] = _drift(method, model, tokenizer, texts)
        if alpha:
            assert method.row_notes()["panda_distillation"] >= 0
    # measured (one thread): KL 0.029 with alpha 5 against 0.827 without distillation
    assert drift[5.0] < drift[0.0] * 0.7, drift


@pytest.mark.parametrize(("options", "field"), [({"alpha": -1}, "alpha"), ({"temperature": 0}, "temperature")])
def test_bad_options_are_refused_naming_them(options, field):
    with pytest.raises(ConfigError, match=field):
        build_method("panda", {"panda": options})
