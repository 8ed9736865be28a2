"""Episodic hints: only what the frozen model gets wrong becomes a hint (the base knowledge
it answers gets none, new and updated facts do), the hint store is a fraction of RAG's
index, a forgotten fact is never hinted, and the weights never change."""

import torch

from ckl.methods.base import build_method
from ckl.run.checkpoint import state_bytes
from tests.methods.edit.memory_helpers import load, stage_context


def test_only_failures_become_hints(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = load(tiny_model_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    change = tiny_stream.stages[0]
    hints, rag = build_method("hints", {}), build_method("rag", {})
    for method in (hints, rag):
        model, stats = method.apply(model, change, stage_context(tiny_stream, tokenizer, accelerator))
        assert stats.not_applied == {}
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    hinted = set(hints.facts)
    new = {f.id for f in change.learn} | {r.fact.id for r in change.update}
    base = {f.id for f in tiny_stream.base}
    assert new - {f.id for f in change.forget} <= hinted, "every new or updated fact the model cannot answer yet is hinted"
    # measured: 17 of the 72 base facts get a hint (the tiny model misses their question or,
    # rarely, their statement), against all 72 in RAG's index
    assert len(hinted & base) < 0.35 * len(base) and len(set(rag.facts) & base) > 0.8 * len(base)
    # measured: 14.8 KB of hints against RAG's 34.0 KB index (the tiny world is mostly new facts)
    assert state_bytes(hints.state_dict()) < 0.5 * state_bytes(rag.state_dict())
    assert not hinted & {f.id for f in change.forget}
    assert 0 < hints.row_notes()["hinted_share"] < 0.5


def test_the_hints_survive_a_checkpoint(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = load(tiny_model_dir)
    hints = build_method("hints", {})
    hints.apply(model, tiny_stream.stages[0], stage_context(tiny_stream, tokenizer, accelerator))
    again = build_method("hints", {})
    again.load_state_dict(hints.state_dict())
    probes = tiny_stream.probes(kinds=("statement",))
    assert [p.prompt for p in again.transform_probes(probes)] == [p.prompt for p in hints.transform_probes(probes)]
    assert again.row_notes() == hints.row_notes()
