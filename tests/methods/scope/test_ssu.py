"""SSU: the output units most important to the base knowledge get no gradient, so they do
not move at all."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.scope.ssu import SSU, SsuConfig, block_matrices, shield_masks
from ckl.model import lm
from ckl.model.scoring import score_probes

TRAIN = {"epochs": 10, "lr": 3e-3}


def _ctx(stream, tokenizer, accelerator):
    change = stream.stages[0]
    return StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)


def test_masks_take_the_top_fraction_of_each_matrix_by_score():
    masks = shield_masks({"a": torch.tensor([0.1, 0.9, 0.5, 0.3]), "b": torch.tensor([2.0, 1.0])}, 0.5)
    assert masks["a"].tolist() == [False, True, True, False] and masks["b"].tolist() == [True, False]
    assert not shield_masks({"a": torch.ones(3)}, 0.0)["a"].any()


def test_shielded_units_do_not_move_and_the_base_knowledge_is_kept_better(tiny_stream, tiny_model_dir, accelerator):
    invariant = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "invariant"]
    seen = {}
    for name in ("naive", "ssu"):
        model, tokenizer = lm.load(tiny_model_dir)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        layout = block_matrices(model)
        method = build_method(name, {"train": TRAIN, **({"ssu": {"fraction": 0.5}} if name == "ssu" else {})})
        ctx = _ctx(tiny_stream, tokenizer, accelerator)
        model, _ = method.apply(model, tiny_stream.stages[0], ctx)
        now = dict(model.named_parameters())
        if name == "ssu":
            masks = method.parts[0].shielded  # the stage's shield (scores from K0; the stage's own are added after it)
            assert set(masks) == set(layout) and all(m.sum() == round(0.5 * m.numel()) for m in masks.values())
            for n, transposed in layout.items():
                shielded = now[n][:, masks[n]] if transposed else now[n][masks[n], :]
                before = start[n][:, masks[n]] if transposed else start[n][masks[n], :]
                assert torch.equal(shielded, before), f"{n}: a shielded unit moved"
                free = now[n][:, ~masks[n]] if transposed else now[n][~masks[n], :]
                assert not torch.equal(free, start[n][:, ~masks[n]] if transposed else start[n][~masks[n], :]), f"{n}: nothing trained"
        seen[name] = float(score_probes(model, tokenizer, invariant).em.mean())
    # measured (seed 0, one thread): K0 statements 0.517 vs naive 0.350; but stage 1 is learned
    # less (0.214 vs 0.393), and naive with half the epochs keeps 0.600 and learns 0.250,
    # beating SSU on both: on the tiny world the shield buys nothing that training less
    # does not. The test asserts the mechanism (the shielded units never move), not a win.
    assert seen["ssu"] > seen["naive"], seen


def test_scores_survive_a_checkpoint(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = SSU(SsuConfig())
    part.prepare(model, _ctx(tiny_stream, tokenizer, accelerator))
    again = SSU(SsuConfig())
    again.load_state_dict(part.state_dict())
    assert again.scores.keys() == part.scores.keys() and all(torch.equal(again.scores[n], part.scores[n]) for n in part.scores)


@pytest.mark.parametrize("bad", [{"fraction": 1.5}, {"fraction": -0.1}, {"gamma": 2}, {"samples": 0}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SsuConfig(**bad)
