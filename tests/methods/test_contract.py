"""Every registered part, alone and composed, honours the method contract on a tiny model:
its config round-trips through JSON and YAML, apply returns a working model, the same seed gives the same
weights, and change kinds it cannot handle are reported, never silently dropped."""

import dataclasses
import json

import pytest
import torch
import yaml

from ckl.methods.base import StageContext, build_method, load_builtin, smallest_expression

PARTS = sorted(n for n, e in load_builtin().items() if e.family == "part")
# a part that needs others (gs_lora needs lora) is tested composed with them, after them
ALONE = [smallest_expression(n) for n in PARTS]
EXPRESSIONS = ALONE + ["lora+replay", "kadapter+replay", "olora+replay", "loramoe+ewc", "importance+recovery+replay"]


@pytest.mark.parametrize("name", PARTS)
def test_config_round_trips(name):
    entry = load_builtin()[name]
    config = entry.config()
    stored = dataclasses.asdict(config)  # as a run stores it: through JSON and YAML
    assert entry.config(**json.loads(json.dumps(stored))) == config
    assert entry.config(**yaml.safe_load(yaml.safe_dump(stored))) == config
    for f in dataclasses.fields(entry.config):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help"


def _apply(expression, stream, model_dir, accelerator, seed=0, curve=None):
    from ckl.model import lm
    from ckl.run.curves import CurveRecorder, select_probes

    model, tokenizer = lm.load(model_dir)
    method = build_method(expression, {"train": {"epochs": 2, "lr": 3e-3, **({"eval_every": 1} if curve is not None else {})}})
    change = stream.stages[0]
    ctx = StageContext(stream.relations, stream.base, 1, seed, tokenizer, accelerator, change=change)
    if curve is not None:  # an in-stage curve scored after every step
        ctx.curve = CurveRecorder(select_probes(stream.probes(), ("invariant", "stage"), 3, seed), tokenizer, 64, accelerator)
        curve.append(ctx.curve)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return method.apply(model, change, ctx), method


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_apply_is_deterministic_and_reports_unsupported_kinds(expression, tiny_stream, tiny_model_dir, accelerator):
    (m1, stats), method = _apply(expression, tiny_stream, tiny_model_dir, accelerator)
    recorders = []
    (m2, curved), _ = _apply(expression, tiny_stream, tiny_model_dir, accelerator, curve=recorders)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k  # the same seed, and an in-stage curve scored after every step, change nothing
    assert len(recorders[0].points) == curved.steps + 1
    change = tiny_stream.stages[0]
    assert "forget" in change.kinds
    claims_forget = any("forget" in load_builtin()[n].kinds for n in expression.split("+"))
    assert ("forget" in method.kinds) == claims_forget
    assert stats.not_applied == ({} if claims_forget else {"forget": len(change.forget)})
    assert stats.tokens_seen > 0 and stats.seconds > 0
    out = m1(torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(out.logits).all()
