"""InfuserKI: the infusers learn to shut the adapters on what the model already knows and
open them on the new facts, so the base knowledge survives training that, with the gates
forced open, destroys it; attaching changes nothing and the adapters come back from a
checkpoint."""

import pytest
import torch

from ckl.methods.base import StageContext, build_method
from ckl.model import lm
from ckl.model.scoring import score_probes

PROMPT = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))


def _ctx(stream, tokenizer, accelerator):
    return StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=stream.stages[0])


def _gate_at_answer(model, tokenizer, part, probes) -> float:
    """Mean gate over the adapted blocks at each prompt's last token (where the answer is read)."""
    seen = []
    hooks = [a.register_forward_hook(lambda m, args, out: seen.append(float(out[1][0, -1]))) for a in part.module.adapters.values()]
    with torch.no_grad():
        for p in probes:
            model(**tokenizer(p.prompt, return_tensors="pt"))
    for h in hooks:
        h.remove()
    return sum(seen) / len(seen)


def test_attaching_changes_nothing_and_only_adapters_train(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    with torch.no_grad():
        before = model(PROMPT).logits
    method = build_method("infuserki", {})
    model = method.parts[0].prepare(model, _ctx(tiny_stream, tokenizer, accelerator))
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("ckl_infuserki.") for n in trainable)


def test_gates_shut_on_known_facts_and_keep_them(tiny_stream, tiny_model_dir, accelerator):
    invariant = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "invariant"]
    taught = [p for p in tiny_stream.probes(kinds=("statement",)) if p.cohort == "stage1"]
    model, tokenizer = lm.load(tiny_model_dir)
    method = build_method("infuserki", {"train": {"epochs": 60, "lr": 1e-2}})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _ = method.apply(model, tiny_stream.stages[0], _ctx(tiny_stream, tokenizer, accelerator))
    part = method.parts[0]
    known, new = _gate_at_answer(model, tokenizer, part, invariant), _gate_at_answer(model, tokenizer, part, taught)
    kept, learned = float(score_probes(model, tokenizer, invariant).em.mean()), float(score_probes(model, tokenizer, taught).em.mean())
    part.module.force_open = True
    kept_open = float(score_probes(model, tokenizer, invariant).em.mean())
    part.module.force_open = False
    # measured (seed 0, one thread): gates 0.24 on K0 prompts, 0.88 on stage-1 prompts; K0
    # statements 0.75 kept (0.10 with every gate forced open), stage 1 learned 0.36 (open: 0.32)
    assert known < 0.35 and new > 0.75, (known, new)
    assert kept > kept_open + 0.4 and learned > 0.2, (kept, kept_open, learned)
    notes = method.row_notes()
    assert notes["infuser_gate_known"] < notes["infuser_gate_unknown"]

    fresh = build_method("infuserki", {})
    fresh.load_state_dict(method.state_dict())
    bare, _ = lm.load(tiny_model_dir)
    bare.load_state_dict(model.state_dict(), strict=False)
    restored = fresh.restore(bare)
    with torch.no_grad():
        torch.testing.assert_close(restored(PROMPT).logits, model(PROMPT).logits)


@pytest.mark.parametrize("bad", [{"layers": []}, {"size": 0}, {"infuser": -1.0}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("infuserki", {"infuserki": bad})
