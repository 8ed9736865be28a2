"""Task-free expansion: blocks are added when the facts handed over are new to the model
(judged from their loss, never from the stage number), not when the same facts come again;
then only the latest blocks train."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.model import lm
from ckl.model.layers import find_blocks


def test_it_expands_on_new_facts_only_and_otherwise_trains_the_latest_blocks(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("shift_expansion", {"train": {"epochs": 60, "lr": 1e-2}})
    part = method.parts[0]
    depths, moved = [], []
    for change in (tiny_stream.stages[0], tiny_stream.stages[0], tiny_stream.stages[1]):  # new, the same again, new
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ctx = StageContext(tiny_stream.relations, tiny_stream.base, change.stage, 0, tokenizer, accelerator, change=change)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _ = method.apply(model, change, ctx)
        depths.append(len(find_blocks(model)[1]))
        moved.append({n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])})
    # measured (seed 0, one thread): shift 42.1 against K0, 1.00 for the repeat, 1.76 for stage 2
    assert [d["expanded"] for d in part.decisions] == [True, False, True], part.decisions
    assert part.decisions[1]["shift"] < 1.2 < 1.5 < part.decisions[2]["shift"]
    assert depths == [4, 4, 5]
    assert moved[1] and all(n.startswith("transformer.h.3.") for n in moved[1]), "the repeat trains only the block stage 1 added"
    assert method.row_notes() == {"data_shift": part.decisions[-1]["shift"], "expanded": True}
    fresh = build_method("shift_expansion", {})
    fresh.load_state_dict(method.state_dict())
    assert fresh.parts[0].decisions == part.decisions and fresh.parts[0].latest == part.latest == [4]


def test_threshold_below_one_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        build_method("shift_expansion", {"shift_expansion": {"threshold": 0.5}})
