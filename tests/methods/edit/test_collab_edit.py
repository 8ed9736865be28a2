"""CollabEdit: parties that share only their key and residual sums reach the model that
MEMIT on all their requests at once gives; the naive merges (sum, average of each
party's own MEMIT update) do not: summing writes the edits worse, averaging shrinks them."""

import pytest
import torch

from ckl.methods.edit.collab_edit import CollabEditConfig, shares
from ckl.model.layers import mlp_output_projection
from ckl.model.scoring import score_probes
from tests.methods.edit.test_rome import TINY, apply, edit_of, statement_probes

EDITS = (0, 7, 14, 21, 28, 35)
SETTINGS = {**TINY, "layers": [0, 1], "stop_loss": 0.0}  # every value optimised for all its steps, whatever the batch


@pytest.fixture(scope="module")
def merged(tiny_stream, tiny_model_dir, accelerator):
    records = [edit_of(tiny_stream, i) for i in EDITS]
    assert len({r.fact.subject for r in records}) == len(records)
    out = {"memit": apply("memit", SETTINGS, tiny_stream, tiny_model_dir, accelerator, records)[:2]}
    for merge in ("collab", "sum", "average"):
        out[merge] = apply("collab_edit", {**SETTINGS, "parties": 3, "merge": merge}, tiny_stream, tiny_model_dir, accelerator, records)[:2]
    return out, records


def _deltas(model, base, layers=(0, 1)):
    return [(mlp_output_projection(model, l).weight - mlp_output_projection(base, l).weight).detach() for l in layers]


def test_the_collaborative_merge_equals_memit_on_all_requests(merged, tiny_model_dir, tiny_stream):
    from ckl.model import lm

    out, records = merged
    base, _ = lm.load(tiny_model_dir)
    global_, collab, summed = (_deltas(out[k][0], base) for k in ("memit", "collab", "sum"))
    for g, c, s in zip(global_, collab, summed):
        assert torch.allclose(c, g, atol=1e-4 * float(g.abs().max())), "the same update, to float tolerance"
        assert (s - g).norm() > 0.05 * g.norm(), "the naive sum is another update"
    probes = statement_probes(tiny_stream, [r.fact for r in records])
    model, tokenizer = out["collab"]
    assert (score_probes(model, tokenizer, probes).em == score_probes(out["memit"][0], tokenizer, probes).em).all()


def test_the_naive_merges_write_the_edits_worse_or_smaller(merged, tiny_stream, tiny_model_dir):
    from ckl.model import lm

    out, records = merged
    probes = statement_probes(tiny_stream, [r.fact for r in records])
    tokenizer = out["collab"][1]
    collab, summed = (score_probes(out[k][0], tokenizer, probes) for k in ("collab", "sum"))
    # measured on the tiny model: mean log-probability of the new objects -1.31 (collab)
    # against -2.11 (sum; base model -6.11), exact match 3/6 against 2/6
    assert summed.logprob.mean() < collab.logprob.mean() - 0.5
    base, _ = lm.load(tiny_model_dir)
    averaged, collab_deltas = _deltas(out["average"][0], base), _deltas(out["collab"][0], base)
    # averaging divides every party's own update by the number of parties
    assert sum(d.norm() for d in averaged) < 0.6 * sum(d.norm() for d in collab_deltas)


def test_shares_and_options():
    assert shares(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shares([1], 3) == [[1]]
    with pytest.raises(ValueError, match="merge"):
        CollabEditConfig(merge="vote")
    with pytest.raises(ValueError, match="parties"):
        CollabEditConfig(parties=0)
