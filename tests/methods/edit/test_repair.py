"""REPAIR's closed loop on the tiny model: edits that drift after they were made are found
and re-edited at the next stage (plain sequential MEMIT leaves them lost); the memory keeps
only each fact's newest edit, drops forgotten facts and the oldest beyond its size, and
survives a checkpoint."""

import pytest
import torch

from ckl.data.stream import Change
from ckl.methods.base import StageContext, build_method
from ckl.methods.edit.memit import edited_layers
from ckl.model import lm
from ckl.model.layers import mlp_output_projection
from ckl.model.scoring import score_probes
from tests.methods.edit.test_rome import TINY, edit_of, statement_probes


def _stage(method, model, tokenizer, stream, accelerator, stage, records=(), forget=()):
    change = Change(stage, edit=tuple(records), forget=tuple(forget))
    ctx = StageContext(stream.relations, stream.base, stage, 0, tokenizer, accelerator, change=change, general_text=stream.general_train)
    return method.apply(model, change, ctx)


def _undo_edits(model, base, layers):
    """Put the edited layers' weights back as they were: every edit so far drifts away."""
    with torch.no_grad():
        for layer in layers:
            mlp_output_projection(model, layer).weight.copy_(mlp_output_projection(base, layer).weight)


def test_drifted_edits_are_found_and_re_edited_where_sequential_memit_leaves_them_lost(tiny_stream, tiny_model_dir, accelerator):
    first = [edit_of(tiny_stream, i) for i in (0, 7, 14)]
    second = [edit_of(tiny_stream, 21)]
    held = {}
    for rounds in (0, 2):
        model, tokenizer = lm.load(tiny_model_dir)
        base, _ = lm.load(tiny_model_dir)
        method = build_method("repair", {"repair": {**TINY, "rounds": rounds}})
        model, _ = _stage(method, model, tokenizer, tiny_stream, accelerator, 1, first)
        assert score_probes(model, tokenizer, statement_probes(tiny_stream, [r.fact for r in first])).em.all()
        _undo_edits(model, base, edited_layers(method.config, model))
        assert not score_probes(model, tokenizer, statement_probes(tiny_stream, [r.fact for r in first])).em.any()
        model, _ = _stage(method, model, tokenizer, tiny_stream, accelerator, 2, second)
        held[rounds] = score_probes(model, tokenizer, statement_probes(tiny_stream, [r.fact for r in first + second])).em
        if rounds:
            assert method.history[-1]["failed"][0] == 3 and method.history[-1]["re_edited"] >= 3
            assert method.row_notes()["repair_re_edited"] >= 3
    assert held[0][:3].sum() == 0, "plain sequential MEMIT never looks back"
    assert held[2].all(), f"the loop brought every drifted edit back: {held[2]}"


def test_the_memory_keeps_the_newest_edit_of_each_fact_and_drops_forgotten_ones(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("repair", {"repair": {**TINY, "rounds": 1, "memory_size": 2}})
    a, b, c = (edit_of(tiny_stream, i) for i in (0, 7, 14))
    model, _ = _stage(method, model, tokenizer, tiny_stream, accelerator, 1, [a, b])
    newer = edit_of(tiny_stream, 0, offset=5)  # the same fact, another new object
    assert newer.fact.id == a.fact.id and newer.fact.object != a.fact.object
    model, _ = _stage(method, model, tokenizer, tiny_stream, accelerator, 2, [newer])
    assert [r.fact.object for r in method.memory.values()] == [b.fact.object, newer.fact.object]
    model, _ = _stage(method, model, tokenizer, tiny_stream, accelerator, 3, [c], forget=[b.fact])
    assert list(method.memory) == [newer.fact.id, c.fact.id]  # b forgotten; a size of 2 holds both
    em = score_probes(model, tokenizer, statement_probes(tiny_stream, [newer.fact, c.fact])).em
    assert em.all(), "the loop asserts the newest object, never the superseded one"

    restored = build_method("repair", {"repair": {**TINY, "rounds": 1, "memory_size": 2}})
    restored.load_state_dict(method.state_dict())
    assert restored.memory == method.memory and restored.history == method.history


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="rounds"):
        build_method("repair", {"repair": {"rounds": -1}})
    with pytest.raises(ValueError, match="memory_size"):
        build_method("repair", {"repair": {"memory_size": 0}})
