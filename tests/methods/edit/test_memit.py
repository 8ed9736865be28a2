"""MEMIT on the tiny model: one edit succeeds as ROME's does; a batch is solved at once."""

import pytest
import torch

from ckl.model.scoring import score_probes
from ckl.methods.edit.memit import MemitConfig, least_squares_update
from tests.methods.edit.test_rome import TINY, apply, edit_of, statement_probes


def test_memit_with_one_edit_matches_rome(tiny_stream, tiny_model_dir, accelerator):
    record = edit_of(tiny_stream)
    target = statement_probes(tiny_stream, [record.fact])
    others = [f for f in tiny_stream.invariant() if f.subject != record.fact.subject]
    results = {}
    for name in ("rome", "memit"):
        model, tokenizer, _ = apply(name, TINY, tiny_stream, tiny_model_dir, accelerator, [record])
        results[name] = (bool(score_probes(model, tokenizer, target).em.all()), score_probes(model, tokenizer, statement_probes(tiny_stream, others)).predicted)
    assert results["memit"][0] and results["rome"][0], "both rewrite the fact"
    kept = sum(a == b for a, b in zip(results["memit"][1], results["rome"][1])) / len(others)
    # MEMIT averages its key over the bare prompt and the contexts as two halves, ROME over
    # all rows (as the two reference implementations do), so the writes differ slightly
    assert kept >= 0.9, "and agree on the other subjects"


def test_memit_edits_a_batch_in_one_call(tiny_stream, tiny_model_dir, accelerator):
    from ckl.model import lm

    records = [edit_of(tiny_stream, i) for i in (0, 7, 14)]
    assert len({r.fact.subject for r in records}) == 3
    probes = statement_probes(tiny_stream, [r.fact for r in records])
    base, tokenizer = lm.load(tiny_model_dir)
    before = score_probes(base, tokenizer, probes).logprob
    model, tokenizer, stats = apply("memit", TINY, tiny_stream, tiny_model_dir, accelerator, records)
    after = score_probes(model, tokenizer, probes).logprob
    assert (after - before > 1.0).all(), f"every new object became more likely: {before} -> {after}"
    assert stats.steps <= 20, "one optimisation for the whole batch, not one per edit"


def test_least_squares_update_writes_residuals_and_spares_other_keys():
    torch.manual_seed(0)
    background = torch.randn(500, 32)
    moment = background.T @ background / 500
    keys, residual = torch.randn(4, 32), torch.randn(4, 8)
    delta = least_squares_update(moment, keys, residual, weight=1e-4)
    assert torch.allclose(keys @ delta.T, residual, atol=1e-2), "tiny lambda: the new keys get their residuals"
    strong = least_squares_update(moment, keys, residual, weight=1e4)
    assert strong.norm() < 0.01 * delta.norm(), "large lambda: the update stays small"


def test_memit_config_validates_layers():
    assert MemitConfig(layers=[2, 1]).layers == [2, 1]
    with pytest.raises(ValueError, match="layers"):
        MemitConfig(layers=[1, 1])
    with pytest.raises(ValueError, match="covariance_weight"):
        MemitConfig(covariance_weight=0)


def test_a_key_unit_never_active_leaves_its_column_unchanged_instead_of_failing():
    """A ReLU unit dead on every text gives the key moment and K^T K a zero row and column
    (measured: OPT's tiny test model at one thread): the update is the minimum-norm one,
    zero in that column and the exact solution on the other units."""
    import torch

    from ckl.methods.edit.memit import least_squares_update

    g = torch.Generator().manual_seed(0)
    keys = torch.randn(12, 6, generator=g)
    keys[:, 2] = 0.0  # unit 2 is never active
    sample = torch.randn(40, 6, generator=g)
    sample[:, 2] = 0.0
    moment = sample.T @ sample / 40
    residual = torch.randn(12, 4, generator=g)
    delta = least_squares_update(moment, keys, residual, 1.0)
    assert torch.isfinite(delta).all()
    torch.testing.assert_close(delta[:, 2], torch.zeros(4), atol=1e-6, rtol=0)
    live = [0, 1, 3, 4, 5]
    expected = least_squares_update(moment[live][:, live], keys[:, live], residual, 1.0)
    torch.testing.assert_close(delta[:, live], expected, atol=1e-5, rtol=1e-5)
