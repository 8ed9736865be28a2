"""GS-LoRA: the group-sparse penalty concentrates the forgetting update in fewer blocks
and shrinks it, the bounded objective stops pushing past its bound, and the part is
refused without the LoRA it needs."""

import pytest

from ckl.methods.base import build_method
from ckl.model import lm
from ckl.model.layers import parameter_depths

TRAIN = {"epochs": 20, "lr": 3e-3}


def _block_updates(model, base) -> list[float]:
    """L2 norm of the weight change of each block (the adapters are merged after the stage)."""
    depths, blocks = parameter_depths(base)
    before = base.state_dict()
    sq = [0.0] * blocks
    for name, value in model.state_dict().items():
        if 0 <= depths.get(name, -1) < blocks:
            sq[depths[name]] += float((value - before[name]).float().pow(2).sum())
    return [v**0.5 for v in sq]


def test_the_penalty_concentrates_the_update_in_fewer_blocks(unlearn, forget_only, forget_facts, exact_match, tiny_model_dir):
    base, _ = lm.load(tiny_model_dir)
    runs = {}
    for alpha in (0.0, 1.0):
        model, tokenizer, stats, _, losses = unlearn("lora+gs_lora", {"train": TRAIN, "gs_lora": {"alpha": alpha, "stop_accuracy": None}}, forget_only)
        assert stats.steps == 20 and exact_match(model, tokenizer, forget_facts) == 0.0
        runs[alpha] = _block_updates(model, base)
    plain, sparse = runs[0.0], runs[1.0]
    # measured on the tiny model: blocks [2.67, 3.21, 3.34] without, [1.15, 0.56, 0.59] with
    assert sum(sparse) < 0.6 * sum(plain)
    assert max(sparse) / sum(sparse) > max(plain) / sum(plain) + 0.08  # the largest block's share: 0.50 against 0.36


def test_the_forgetting_term_is_bounded(unlearn, forget_only):
    *_, losses = unlearn("lora+gs_lora", {"train": TRAIN, "gs_lora": {"alpha": 0.0, "retain_weight": 0.0, "stop_accuracy": None, "bound": 2.0}}, forget_only)
    assert all(v >= 0 for v in losses) and losses[-1] < 1e-6  # relu(bound - NLL) reaches 0 and stays there


def test_gs_lora_needs_lora():
    with pytest.raises(ValueError, match="needs 'lora'"):
        build_method("gs_lora")
    with pytest.raises(ValueError, match="alpha"):
        build_method("lora+gs_lora", {"gs_lora": {"alpha": -1}})
