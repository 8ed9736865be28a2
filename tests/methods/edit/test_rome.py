"""ROME on the tiny model: one edit rewrites its fact and leaves other subjects alone."""

import copy

import pytest
import torch

from ckl.model.scoring import score_probes
from ckl.data.facts import ChangeRecord, Fact
from ckl.methods.base import StageContext, build_method, load_builtin
from ckl.methods.edit.rome import RomeConfig, rank_one_update
from ckl.data.stream import Change, make_probes


def edit_of(stream, index=0, offset=3):
    """A counterfactual edit of the index-th invariant fact (to another candidate)."""
    fact = stream.invariant()[index]
    new = [c for c in stream.relations[fact.relation].candidates if c != fact.object][offset]
    return ChangeRecord(1, "edit", Fact(fact.id, fact.subject, fact.relation, new, 1), fact.object)


def apply(name, options, stream, model_dir, accelerator, records):
    from ckl.model import lm

    model, tokenizer = lm.load(model_dir)
    method = build_method(name, {name: options})
    change = Change(1, edit=tuple(records))
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change, general_text=stream.general_train)
    model, stats = method.apply(model, change, ctx)
    return model, tokenizer, stats


# The tiny test model keys its people on the first name token: over its first 6 invariant
# facts, ROME at the first subject token kept 0.958 of other subjects' answers, at the last
# 0.814 (same efficacy, 5 of 6). The editors' defaults follow the paper (last token).
TINY = {"subject_token": "first"}


def statement_probes(stream, facts, cohort="x"):
    return make_probes(facts, stream.relations, cohort, 0, "base", ("statement",), 10)


def test_rome_edit_rewrites_the_fact_and_keeps_other_subjects(tiny_stream, tiny_model_dir, accelerator):
    from ckl.model import lm

    base_model, tokenizer = lm.load(tiny_model_dir)
    rewritten, kept = 0, []
    for index in range(6):  # six single edits, each from the unedited model
        record = edit_of(tiny_stream, index)
        others = [f for f in tiny_stream.invariant() if f.subject != record.fact.subject]
        before = score_probes(base_model, tokenizer, statement_probes(tiny_stream, others))
        target = statement_probes(tiny_stream, [record.fact])
        assert not score_probes(base_model, tokenizer, target).em.any()
        model, tokenizer, stats = apply("rome", TINY, tiny_stream, tiny_model_dir, accelerator, [record])
        rewritten += bool(score_probes(model, tokenizer, target).em.all())
        after = score_probes(model, tokenizer, statement_probes(tiny_stream, others))
        kept.append(sum(a == b for a, b in zip(before.predicted, after.predicted)) / len(others))
        assert stats.steps > 0 and stats.seconds > 0 and stats.not_applied == {}
    # measured: 5 of 6 rewritten, 0.958 of other subjects' answers kept on average with the
    # packages of 2026-11-29; 0.928 (0.875-0.982 per edit) with those of 2026-11-30
    # (transformers 5.24.0), whose tiny pretrained model differs: the bound leaves room for that
    assert rewritten >= 5, "the edited facts now give the new object"
    assert sum(kept) / len(kept) >= 0.9, f"only {kept} of other subjects' predictions kept"


def test_rank_one_update_maps_the_key_to_the_value_exactly():
    torch.manual_seed(0)
    keys = torch.randn(200, 16)
    moment = keys.T @ keys / 200
    k, v, v0 = torch.randn(16), torch.randn(8), torch.randn(8)
    delta = rank_one_update(moment, k, k, v, v0)
    assert torch.allclose(v0 + delta @ k, v, atol=1e-4)
    assert torch.linalg.matrix_rank(delta) == 1


def test_rome_refuses_the_last_layer_and_bad_options(tiny_stream, tiny_model_dir, accelerator):
    with pytest.raises(ValueError, match="last"):
        apply("rome", {"layer": 2}, tiny_stream, tiny_model_dir, accelerator, [edit_of(tiny_stream)])
    with pytest.raises(ValueError, match="essence_prompt"):
        RomeConfig(essence_prompt="is a")
    with pytest.raises(ValueError, match="steps"):
        RomeConfig(steps=0)


def test_rome_resumes_from_a_checkpoint_without_state(tiny_stream, tiny_model_dir, accelerator):
    # ROME keeps nothing between stages: a method rebuilt from an empty state (as after a
    # resume) applies the next edit exactly as the one that applied the earlier edits.
    from ckl.model import lm

    assert load_builtin()["rome"].kinds == {"edit", "update"}
    first = build_method("rome", {"rome": {**TINY, "steps": 3}})
    model, tokenizer = lm.load(tiny_model_dir)
    ctx = lambda change: StageContext(tiny_stream.relations, tiny_stream.base, change.stage, 0, tokenizer, accelerator,
                                      change=change, general_text=tiny_stream.general_train)
    one, two = Change(1, edit=(edit_of(tiny_stream, 0),)), Change(2, edit=(edit_of(tiny_stream, 7),))
    model, _ = first.apply(model, one, ctx(one))
    assert first.state_dict() == {}
    copy_of_first = {k: v.clone() for k, v in model.state_dict().items()}
    resumed = build_method("rome", {"rome": {**TINY, "steps": 3}})
    resumed.load_state_dict(first.state_dict())
    twin = copy.deepcopy(model)
    a, _ = first.apply(model, two, ctx(two))
    b, _ = resumed.apply(twin, two, ctx(two))
    assert a is not b
    changed = 0
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
        changed += not torch.equal(x, copy_of_first[k])
    assert changed == 1  # the second edit wrote one matrix, the same in both


def test_rome_reports_learn_and_forget_as_not_applied(tiny_stream, tiny_model_dir, accelerator):
    from ckl.model import lm

    model, tokenizer = lm.load(tiny_model_dir)
    change = tiny_stream.stages[0]
    ctx = StageContext(tiny_stream.relations, tiny_stream.base, 1, 0, tokenizer, accelerator, change=change, general_text=tiny_stream.general_train)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model, stats = build_method("rome", {"rome": {"steps": 2}}).apply(model, change, ctx)
    assert stats.not_applied == {"learn": len(change.learn), "forget": len(change.forget)}
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])]
    assert changed == ["transformer.h.0.mlp.c_proj.weight"], "the updates were applied to the one edited matrix"
