"""The editing core's one value optimiser, shared by ROME, MEMIT, GRACE and kv_memory."""

import pytest
import torch

from ckl.methods.edit._memory import edit_batch
from ckl.methods.edit._requests import edit_batches
from ckl.methods.edit._values import ValueSettings, optimize_values
from ckl.model.layers import block_mlp, mlp_output_projection


def _records(stream, n):
    return list(stream.stages[0].update)[:n]


@pytest.mark.parametrize("replace", [False, True])
def test_a_batch_of_edits_gives_each_edit_the_value_it_gets_alone(tiny_model, tiny_stream, replace):
    model, tokenizer = tiny_model
    records = _records(tiny_stream, 3)
    mlp = block_mlp(model, -1)
    settings = ValueSettings(steps=8, kl_weight=0.0, weight_decay=0.01, decay="squared", clamp=None, stop_loss=0.0, stop_on="nll")
    batch = edit_batch(tokenizer, records, tiny_stream.relations)
    together = optimize_values(model, mlp, batch, settings, positions=batch.last_pos, replace=replace)
    for g, record in enumerate(records):
        one = edit_batch(tokenizer, [record], tiny_stream.relations)
        alone = optimize_values(model, mlp, one, settings, positions=one.last_pos, replace=replace)
        assert torch.allclose(together.values[g], alone.values[0], atol=1e-4)
        assert torch.allclose(together.loss[g], alone.loss[0], atol=1e-4)


@pytest.mark.parametrize("replace", [False, True])
def test_optimising_lowers_each_edits_loss_and_returns_consistent_values(tiny_model, tiny_stream, replace):
    model, tokenizer = tiny_model
    batch = edit_batch(tokenizer, _records(tiny_stream, 4), tiny_stream.relations)
    mlp = block_mlp(model, -1)
    plain = dict(kl_weight=0.0, weight_decay=0.0, clamp=None, stop_loss=0.0, stop_on="nll")
    start = optimize_values(model, mlp, batch, ValueSettings(steps=1, lr=0.0, **plain), positions=batch.last_pos, replace=replace)
    found = optimize_values(model, mlp, batch, ValueSettings(steps=30, **plain), positions=batch.last_pos, replace=replace)
    assert (found.loss < start.loss).all()
    assert torch.equal(start.values, start.initial)  # nothing moved with lr 0: the value is the module's own output
    assert torch.allclose(found.values, found.initial + found.delta)


def test_the_clamp_bounds_each_delta_relative_to_the_original_value(tiny_model, tiny_stream):
    model, tokenizer = tiny_model
    records = _records(tiny_stream, 3)
    batches = edit_batches(tokenizer, records, tiny_stream.relations, [], 0, "{subject} is a", 0)
    module = mlp_output_projection(model, 0)
    found = optimize_values(model, module, batches.rewrite, ValueSettings(steps=30, lr=2.0, clamp=0.1, stop_loss=0.0), essence=batches.essence)
    ratio = found.delta.norm(dim=1) / found.initial.norm(dim=1)
    assert (ratio <= 0.1 + 1e-5).all()
    assert (ratio > 0.05).all()  # the clamp binds: the unconstrained value would move further


def test_an_edit_stops_once_its_loss_is_below_stop_loss(tiny_model, tiny_stream):
    model, tokenizer = tiny_model
    batch = edit_batch(tokenizer, _records(tiny_stream, 2), tiny_stream.relations)
    mlp = block_mlp(model, -1)
    found = optimize_values(model, mlp, batch, ValueSettings(steps=200, kl_weight=0.0, weight_decay=0.0, clamp=None, stop_loss=1.0, stop_on="nll"), positions=batch.last_pos)
    assert found.steps < 200 and (found.loss < 1.0).all()


def test_unknown_decay_or_stop_rule_is_refused():
    with pytest.raises(ValueError, match="decay"):
        ValueSettings(decay="cubic")
    with pytest.raises(ValueError, match="stop_on"):
        ValueSettings(stop_on="never")
