"""Dual importance: within each block matrix only the elements most important for the new
facts relative to the knowledge to keep train; every other element never moves."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.scope.dual_importance import DualImportance, DualImportanceConfig, ratio_masks
from ckl.methods.scope.ssu import block_matrices
from ckl.model import lm
from ckl.model.scoring import score_probes

TRAIN = {"epochs": 10, "lr": 3e-3}


def test_the_mask_takes_the_highest_new_to_old_ratios():
    new = {"w": torch.tensor([[1.0, 1.0], [4.0, 0.1]])}
    old = {"w": torch.tensor([[1.0, 0.1], [1.0, 1.0]])}
    assert ratio_masks(new, old, 0.5)["w"].tolist() == [[False, True], [True, False]]  # ratios 1, 10, 4, 0.1


def test_only_the_chosen_elements_move(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
    method = build_method("dual_importance", {"train": TRAIN, "dual_importance": {"fraction": 0.2}})
    model, _ = method.apply(model, change, ctx)
    masks = method.parts[0].masks
    now = dict(model.named_parameters())
    assert set(masks) == set(block_matrices(model))
    for name, mask in masks.items():
        assert mask.sum() == round(0.2 * mask.numel())
        assert torch.equal(now[name][~mask], start[name][~mask]), f"{name}: an unchosen element moved"
        assert not torch.equal(now[name][mask], start[name][mask]), f"{name}: nothing trained"
    taught = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "stage1"]
    assert float(score_probes(model, tokenizer, taught).em.mean()) > 0  # measured: see the part's docstring


def test_old_scores_survive_a_checkpoint(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=tiny_stream.stages[0])
    part = DualImportance(DualImportanceConfig())
    part.prepare(model, ctx)
    again = DualImportance(DualImportanceConfig())
    again.load_state_dict(part.state_dict())
    assert again.old.keys() == part.old.keys() and all(torch.equal(again.old[n], part.old[n]) for n in part.old)


@pytest.mark.parametrize("bad", [{"fraction": 0}, {"fraction": 2}, {"gamma": 1.5}, {"samples": 0}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DualImportanceConfig(**bad)


def test_with_target_forget_an_unlearning_part_forgets_through_the_located_weights_only(tiny_stream, tiny_model_dir, accelerator):
    from ckl.data.stream import Change

    model, tokenizer = lm.load(tiny_model_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    forget = tuple(tiny_stream.stages[0].forget)
    change = Change(1, forget=forget)
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change)
    method = build_method("ga+dual_importance", {"train": {"epochs": 50, "lr": 1e-3}, "dual_importance": {"fraction": 0.2, "target": "forget"}})
    model, stats = method.apply(model, change, ctx)
    assert stats.not_applied == {}
    masks = method.parts[1].masks
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n][~m], start[n][~m]) for n, m in masks.items()), "only the located weights moved"
    probes = [p for p in tiny_stream.probes(kinds=("statement",)) if p.fact_id in {f.id for f in forget} and p.change == "forget"]
    assert float(score_probes(model, tokenizer, probes).em.mean()) == 0.0, "the targets are forgotten"


@pytest.mark.parametrize("expression,options,needle", [
    ("lora+ssu", {}, "'ssu' cannot be combined with 'lora'"),
    ("loki+lora", {}, "'loki' cannot be combined with 'lora'"),
    ("dual_importance", {"train": {"weight_decay": 0.1}}, "weight_decay 0.1 would move the masked weights"),
])
def test_masked_scopes_refuse_what_would_move_their_masked_weights(expression, options, needle):
    with pytest.raises(ValueError, match=needle):
        build_method(expression, options)


def test_target_forget_refuses_a_stage_that_also_teaches_and_keeps_forgotten_facts_out_of_the_keep_set(tiny_stream, tiny_model_dir, accelerator):
    from ckl.data.stream import Change

    model, tokenizer = lm.load(tiny_model_dir)
    mixed = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=mixed)
    with pytest.raises(ValueError, match="also teaches"):
        build_method("ga+dual_importance", {"dual_importance": {"target": "forget"}}).apply(model, mixed, ctx)
    part = DualImportance(DualImportanceConfig(target="forget"))
    forget = Change(1, forget=tuple(mixed.forget))
    part.prepare(model, StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=forget))
    assert part.forgotten == {f.id for f in mixed.forget}
    assert all(not p.requires_grad for n, p in model.named_parameters() if "wte" in n or "ln_" in n), "outside the blocks' matrices nothing trains"
    again = DualImportance(DualImportanceConfig(target="forget"))
    again.load_state_dict(part.state_dict())
    assert again.forgotten == part.forgotten
