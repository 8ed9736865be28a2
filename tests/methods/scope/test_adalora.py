"""AdaLoRA: the rank budget falls from init_r to target_r per module on average, allocated
unevenly by importance, and each module's merged update has exactly the rank it was given
(a module given none is left unchanged)."""

import pytest
import torch

from ckl.core.checks import ConfigError
from ckl.methods.base import StageContext, build_method
from ckl.model import lm


def _stage(stream, model_dir, accelerator, epochs=10):
    model, tokenizer = lm.load(model_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = build_method("adalora", {"train": {"epochs": epochs, "lr": 3e-3}, "adalora": {"init_r": 12, "target_r": 4}})
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=stream.stages[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, stream.stages[0], ctx)
    return method, start, dict(model.named_parameters())


def test_the_budget_is_met_unevenly_and_each_merged_update_has_its_allocated_rank(tiny_stream, tiny_model_dir, accelerator):
    method, start, now = _stage(tiny_stream, tiny_model_dir, accelerator)
    ranks = method.parts[0].ranks[-1]
    assert len(ranks) == 12  # every linear layer of the 3-block GPT-2 but the head
    assert sum(ranks.values()) == 4 * len(ranks)
    # measured (seed 0, one thread): 10, 10, 8, 8 in the first block, 0 to 4 in the others
    assert max(ranks.values()) > 4 > min(ranks.values()), ranks
    for module, rank in ranks.items():
        delta = (now[f"{module}.weight"] - start[f"{module}.weight"]).float()
        assert int(torch.linalg.matrix_rank(delta, atol=1e-6)) == rank, module
    notes = method.row_notes()
    assert notes["adalora_ranks"] == ranks and notes["adalora_rank_total"] == 48
    assert set(now) == set(start), "merged into a plain model"


def test_the_ranks_survive_a_checkpoint(tiny_stream, tiny_model_dir, accelerator):
    method, _, _ = _stage(tiny_stream, tiny_model_dir, accelerator, epochs=4)
    fresh = build_method("adalora", {})
    fresh.load_state_dict(method.state_dict())
    assert fresh.parts[0].ranks == method.parts[0].ranks and fresh.row_notes() == method.row_notes()


def test_one_epoch_is_refused_and_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="epochs"):
        build_method("adalora", {"train": {"epochs": 1}})
    for bad in ({"target_r": 20}, {"warmup": 0.6, "final": 0.5}, {"interval": 0}):
        with pytest.raises(ValueError, match=list(bad)[-1]):
            build_method("adalora", {"adalora": bad})
