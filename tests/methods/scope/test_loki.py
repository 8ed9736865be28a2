"""LoKI: only the feed-forward slots least important to the base knowledge train (a slot's
key in the up-projection and its value in the down-projection move together, nothing else
moves)."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.methods.scope.loki import Loki, LokiConfig, slot_layout
from ckl.model import lm
from ckl.model.scoring import score_probes

TRAIN = {"epochs": 10, "lr": 3e-3}


def _ctx(stream, tokenizer, accelerator):
    change = stream.stages[0]
    return StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change)


def test_the_slots_of_a_gpt2_mlp_are_its_up_columns_bias_and_down_rows(tiny_model):
    model, _ = tiny_model
    (first, *_) = slot_layout(model)
    inner = model.config.n_inner or 4 * model.config.n_embd
    assert first["slots"] == inner
    assert sorted(first["parts"]) == sorted([("transformer.h.0.mlp.c_proj.weight", True, False),
                                             ("transformer.h.0.mlp.c_fc.weight", True, True),
                                             ("transformer.h.0.mlp.c_fc.bias", None, True)])


def test_only_the_least_important_slots_move_and_the_base_knowledge_is_kept_better(tiny_stream, tiny_model_dir, accelerator):
    invariant = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "invariant"]
    taught = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "stage1"]
    seen, learned = {}, {}
    for name in ("naive", "loki"):
        model, tokenizer = lm.load(tiny_model_dir)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        method = build_method(name, {"train": TRAIN, **({"loki": {"fraction": 0.25}} if name == "loki" else {})})
        model, stats = method.apply(model, tiny_stream.stages[0], _ctx(tiny_stream, tokenizer, accelerator))
        now = dict(model.named_parameters())
        if name == "loki":
            part = method.parts[0]
            moved = {n for n in now if not torch.equal(now[n], start[n])}
            assert moved and moved <= set(part.masks), "nothing outside the MLP slots moved"
            for i, slots in enumerate(part.trained):
                fc, proj = f"transformer.h.{i}.mlp.c_fc.weight", f"transformer.h.{i}.mlp.c_proj.weight"
                others = torch.ones(now[fc].shape[1], dtype=torch.bool)
                others[slots] = False
                assert torch.equal(now[fc][:, others], start[fc][:, others]) and torch.equal(now[proj][others, :], start[proj][others, :])
                assert not torch.equal(now[fc][:, slots], start[fc][:, slots])
            assert all(p.requires_grad for p in model.parameters()), "every weight trainable again after the stage"
        seen[name] = float(score_probes(model, tokenizer, invariant).em.mean())
        learned[name] = float(score_probes(model, tokenizer, taught).em.mean())
    # measured (seed 0, one thread): K0 statements 0.95 vs naive 0.35, but the stage is barely
    # learned (0.07 vs 0.39): at these settings LoKI keeps the old by not learning the new.
    # With 30 epochs at lr 1e-2: 0.467 kept, 0.25 learned. The shielding works; whether it
    # buys a better trade-off than training less is for the methods table to say.
    assert seen["loki"] > seen["naive"] and learned["loki"] > 0, (seen, learned)


def test_scores_survive_a_checkpoint(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = Loki(LokiConfig())
    part.prepare(model, _ctx(tiny_stream, tokenizer, accelerator))
    part.finish(model, None)
    again = Loki(LokiConfig())
    again.load_state_dict(part.state_dict())
    assert len(again.scores) == len(part.scores) and all(torch.equal(a, b) for a, b in zip(again.scores, part.scores))


@pytest.mark.parametrize("bad", [{"fraction": 0}, {"fraction": 1.5}, {"gamma": -1}, {"batch_size": 0}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LokiConfig(**bad)
