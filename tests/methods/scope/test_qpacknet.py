"""Ada-QPacknet-style packing: a stage keeps its update only in its share of the free block
weights, on a quantised grid, and no later stage moves the weights it claimed."""

import pytest
import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import StageContext, build_method
from ckl.methods.penalty.l2 import base_parameters
from ckl.methods.scope.ssu import block_matrices
from ckl.model import lm

OPTIONS = {"train": {"epochs": 3, "lr": 3e-3}, "qpacknet": {"keep": 0.1, "bits": 4}}


@pytest.fixture(scope="module")
def stages(tiny_stream, tiny_model_dir, accelerator):
    """The block matrices at the start, after stage 1 and after stage 2, and the method."""
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("qpacknet", OPTIONS)
    names = list(block_matrices(model))
    snap = lambda m: {n: p.detach().clone() for n, p in base_parameters(m).items() if n in names}
    out = [snap(model)]
    for j in (1, 2):
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, j, 0, tokenizer, accelerator, change=tiny_stream.stages[j - 1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(j)
            model, _ = method.apply(model, tiny_stream.stages[j - 1], ctx)
        out.append(snap(model))
    return out, method.parts[0]


def test_a_stage_keeps_its_update_in_its_share_of_the_free_weights_on_a_4_bit_grid(stages):
    (start, first, _), _ = stages
    for name, w in start.items():
        delta = first[name] - w
        moved = delta != 0
        assert 0 < int(moved.sum()) <= round(0.1 * w.numel()), name
        step = delta.abs().max() / 7  # 4 bits: +-7 steps of the matrix's absmax scale
        grid = delta[moved] / step
        assert (grid - grid.round()).abs().max() < 1e-3 and grid.round().abs().max() <= 7, name


def test_weights_a_stage_claimed_never_move_again_and_stages_claim_disjoint_weights(stages):
    (start, first, second), method = stages
    for name in start:
        one = first[name] != start[name]
        assert torch.equal(second[name][one], first[name][one]), name
        two = second[name] != first[name]
        assert not (one & two).any() and two.any(), name
        assert int((method.claimed[name]).sum()) >= int((one | two).sum())
    assert method.row_notes()["qpacknet_claimed"] == pytest.approx(0.19, abs=1e-3)  # 0.1 of all, then 0.1 of the 0.9 left


def test_the_claims_survive_a_checkpoint(stages):
    _, method = stages
    again = build_method("qpacknet", OPTIONS).parts[0]
    again.load_state_dict(method.state_dict())
    assert set(again.claimed) == set(method.claimed)
    assert all(torch.equal(again.claimed[n], method.claimed[n]) for n in method.claimed)


@pytest.mark.parametrize(("options", "field"), [({"keep": 0}, "keep"), ({"keep": 1.5}, "keep"), ({"bits": 1}, "bits")])
def test_bad_options_are_refused_naming_them(options, field):
    with pytest.raises(ConfigError, match=field):
        build_method("qpacknet", {"qpacknet": options})
