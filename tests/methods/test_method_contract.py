"""Every registered method that is not a composition of parts (the editors, and whatever
registers with `register_method` next) honours the method contract, with no list to edit:
its config is documented and survives the JSON and YAML a run stores, the same seed gives
the same model, kinds it cannot apply are reported, and applying an edit makes the model
prefer the new object more than the base model did (or, for an in-context method, puts
the new fact in the prompt)."""

import dataclasses
import json

import pytest
import torch
import yaml

from ckl.data.stream import Change, make_probes
from ckl.methods.base import Method, StageContext, build_method, load_builtin
from ckl.model.scoring import score_probes
from tests.methods._quick import QUICK
from tests.methods.edit.test_rome import edit_of

METHODS = sorted(n for n, e in load_builtin().items() if e.family == "method")


def test_the_suite_sees_every_editor():
    assert {"rome", "memit", "grace", "kv_memory", "ike"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_config_is_documented_and_survives_json_and_yaml(name):
    entry = load_builtin()[name]
    config = entry.config()
    assert all(f.metadata.get("help") for f in dataclasses.fields(entry.config)), f"{name}: a field has no help"
    stored = dataclasses.asdict(config)
    assert entry.config(**json.loads(json.dumps(stored))) == config
    assert entry.config(**yaml.safe_load(yaml.safe_dump(stored))) == config
    assert isinstance(build_method(name, {name: stored}), Method)


def _apply(name, stream, model_dir, accelerator, change):
    from ckl.model import lm

    model, tokenizer = lm.load(model_dir)
    options = {name: {"steps": 20}} if "steps" in {f.name for f in dataclasses.fields(load_builtin()[name].config)} else {}
    options = QUICK.get(name, options)
    method = build_method(name, options)
    ctx = StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change, general_text=stream.general_train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, stats = method.apply(model, change, ctx)
    return model, tokenizer, method, stats


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_model_and_edits_take_effect(name, tiny_stream, tiny_model_dir, accelerator):
    from ckl.model import lm

    records = (edit_of(tiny_stream, 0), edit_of(tiny_stream, 7))
    forget = tuple(tiny_stream.stages[0].forget)
    change = Change(1, edit=records, forget=forget)
    m1, tokenizer, method, stats = _apply(name, tiny_stream, tiny_model_dir, accelerator, change)
    m2, _, method2, _ = _apply(name, tiny_stream, tiny_model_dir, accelerator, change)

    kinds = load_builtin()[name].kinds
    assert method.kinds == kinds
    assert stats.not_applied == ({} if "forget" in kinds else {"forget": len(forget)})

    probes = make_probes([r.fact for r in records], tiny_stream.relations, "edit1", 1, "new", ("statement",), 10)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), f"{name}: {k} differs between two runs with one seed"
    asked1, asked2 = method.transform_probes(probes), method2.transform_probes(probes)
    assert [p.prompt for p in asked1] == [p.prompt for p in asked2] and [p.id for p in asked1] == [p.id for p in probes]
    after = score_probes(m1, tokenizer, asked1)
    assert (after.logprob == score_probes(m2, tokenizer, asked2).logprob).all()

    if any(r.fact.object in p.prompt for r, p in zip(records, asked1)):
        # an in-context method: the knowledge is in the prompt. Whether the model reads it
        # needs a model pretrained to copy from context (tests/methods/edit/test_ike.py).
        assert all(r.fact.object in p.prompt for r, p in zip(records, asked1)), f"{name}: the prompt lacks the new fact"
    else:  # in the weights, beside them, or in prompt tokens the method trained (cmt, l2p)
        base, _ = lm.load(tiny_model_dir)
        before = score_probes(base, tokenizer, probes)
        assert (after.logprob > before.logprob).all(), f"{name}: the new objects are not more likely after the edit"


@pytest.mark.parametrize("name", METHODS)
def test_the_state_survives_a_checkpoint(name, tiny_stream, tiny_model_dir, accelerator, tmp_path):
    """Through the runner's own checkpoint files: the model reloaded with the method's
    state asks and scores every probe as the method that wrote it."""
    from ckl.results.store import StageInfo
    from ckl.run import checkpoint

    change = Change(1, edit=(edit_of(tiny_stream, 0),), forget=tuple(tiny_stream.stages[0].forget))
    model, tokenizer, method, _ = _apply(name, tiny_stream, tiny_model_dir, accelerator, change)
    checkpoint.save(tmp_path / "ckpt", model, tokenizer, 1, method.state_dict(), StageInfo(), name)
    again = build_method(name, QUICK.get(name, {}))
    model2, tokenizer2, _ = checkpoint.load(tmp_path / "ckpt", again)
    probes = tiny_stream.probes(kinds=("statement",))[:40]
    asked, asked2 = method.transform_probes(probes), again.transform_probes(probes)
    assert [p.prompt for p in asked2] == [p.prompt for p in asked]
    want, got = score_probes(model, tokenizer, asked), score_probes(model2, tokenizer2, asked2)
    assert (want.em == got.em).all() and got.logprob == pytest.approx(want.logprob, abs=1e-4)
