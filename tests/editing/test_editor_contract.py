"""The editors honour the method contract: documented config that round-trips, the same
seed gives the same weights, and only the edited matrices change."""

import dataclasses

import pytest
import torch

from ckl.methods.base import load_builtin
from tests.methods.test_rome import apply, edit_of

EDITORS = ("rome", "memit")


@pytest.mark.parametrize("name", EDITORS)
def test_config_round_trips_with_help(name):
    entry = load_builtin()[name]
    config = entry.config()
    assert entry.config(**dataclasses.asdict(config)) == config
    assert all(f.metadata.get("help") for f in dataclasses.fields(entry.config))


@pytest.mark.parametrize("name", EDITORS)
def test_edit_is_deterministic_and_touches_only_mlp_projections(name, tiny_stream, tiny_model_dir, accelerator):
    from ckl import lm

    base, _ = lm.load(tiny_model_dir)
    records = [edit_of(tiny_stream, 0), edit_of(tiny_stream, 7)]
    m1, _, _ = apply(name, {"steps": 3}, tiny_stream, tiny_model_dir, accelerator, records)
    m2, _, _ = apply(name, {"steps": 3}, tiny_stream, tiny_model_dir, accelerator, records)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    changed = {k for k, v in m1.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed and all(k.endswith("mlp.c_proj.weight") for k in changed), changed
