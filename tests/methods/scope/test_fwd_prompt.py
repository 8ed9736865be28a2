"""Fwd-Prompt-style tuning: a later stage changes the shared prompt only outside the
directions earlier stages wrote in, while every weight of the model stays bit-identical."""

import pytest
import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import apply_stage, build_method
from ckl.model import lm
from tests.methods.edit.memory_helpers import stage_context

OPTIONS = {"epochs": 20, "lr": 0.03}


def test_a_later_stage_leaves_the_earlier_stages_directions_of_the_prompt_as_they_were(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("fwd_prompt", {"fwd_prompt": OPTIONS})
    model, _ = apply_stage(method, model, tiny_stream.stages[0], stage_context(tiny_stream, tokenizer, accelerator, 1))
    first, basis = method.bank.banks[0].detach().clone(), method.basis.clone()
    assert 1 <= basis.shape[1] < first.shape[1] and torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5)
    model, _ = apply_stage(method, model, tiny_stream.stages[1], stage_context(tiny_stream, tokenizer, accelerator, 2))
    second = method.bank.banks[0].detach()
    # measured (one thread): the second stage moves the prompt by 5.2, by 3e-7 along the first stage's 12 directions
    assert (second - first).norm() > 1e-2  # the second stage trained the prompt
    torch.testing.assert_close(second @ basis, first @ basis, atol=1e-5, rtol=1e-5)  # but not along the first stage's directions
    assert method.basis.shape[1] > basis.shape[1] and method.row_notes()["fwd_prompt_basis"] == method.basis.shape[1]
    assert len(method.banks) == 1  # one prompt for every stage
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items() if k in weights)


@pytest.mark.parametrize(("options", "field"), [({"energy": 0}, "energy"), ({"energy": 1.5}, "energy"), ({"tokens": 0}, "tokens")])
def test_bad_options_are_refused_naming_them(options, field):
    with pytest.raises(ConfigError, match=field):
        build_method("fwd_prompt", {"fwd_prompt": options})
