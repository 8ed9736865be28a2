"""RegLoRA: after a stage its largest weight changes become key positions, and the next
stage's LoRA update avoids them when the penalty is on; the positions survive a checkpoint."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.model import lm


def _two_stages(weight, stream, model_dir, accelerator):
    model, tokenizer = lm.load(model_dir)
    method = build_method("lora+reglora", {"train": {"epochs": 5, "lr": 3e-3}, "reglora": {"weight": weight, "ratio": 0.05}})
    part = method.parts[1]
    snapshots = []
    for stage, change in enumerate(stream.stages, start=1):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        ctx = StageContext(stream.relations, stream.base, stage, 0, tokenizer, accelerator, change=change)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage)
            model, _ = method.apply(model, change, ctx)
        if stage == 1:
            masks = {k: m.clone() for k, m in part.masks.items()}
    second = {k: model.state_dict()[k] - snapshots[1][k] for k in masks}
    return masks, second, part


def test_the_second_stage_keeps_off_the_first_stages_key_positions(tiny_stream, tiny_model_dir, accelerator):
    masks, plain, _ = _two_stages(0.0, tiny_stream, tiny_model_dir, accelerator)
    masks_reg, regular, part = _two_stages(10.0, tiny_stream, tiny_model_dir, accelerator)
    assert masks.keys() == masks_reg.keys() and all(torch.equal(masks[k], masks_reg[k]) for k in masks)  # stage 1 is penalty-free
    assert all(0 < m.float().mean() <= 0.06 for m in masks.values())  # about `ratio` of each matrix
    at_keys = lambda deltas: sum(float(d[masks[k]].pow(2).sum()) for k, d in deltas.items()) ** 0.5
    elsewhere = lambda deltas: sum(float(d[~masks[k]].pow(2).sum()) for k, d in deltas.items()) ** 0.5
    assert at_keys(regular) < 0.3 * at_keys(plain)  # the update avoids the key positions: measured 0.085 against 0.544
    assert elsewhere(regular) > 0.5 * elsewhere(plain)  # and still happens elsewhere: 1.60 against 2.14
    again = build_method("lora+reglora").parts[1]
    again.load_state_dict(part.state_dict())
    assert again.masks.keys() == part.masks.keys() and all(torch.equal(again.masks[k], part.masks[k]) for k in part.masks)


def test_reglora_needs_lora():
    with pytest.raises(ValueError, match="needs 'lora'"):
        build_method("reglora")
