"""Recovery distillation: the documents are exactly what the stage-start model generates,
they are mixed into training, and training on them keeps the model's earlier predictions
better than plain fine-tuning does."""

import pytest
import torch

from ckl.model import lm
from ckl.model.scoring import score_probes
from ckl.data.facts import ChangeRecord, Fact
from ckl.methods.base import StageContext, build_method
from ckl.methods.distill.recovery import Recovery, RecoveryConfig
from ckl.data.stream import Change

TRAIN = {"epochs": 10, "lr": 3e-3}


def _ctx(stream, tokenizer, accelerator, change=None, stage=1):
    change = change or stream.stages[stage - 1]
    return StageContext(stream.relations, stream.base, stage, 0, tokenizer, accelerator, change=change)


def test_documents_are_the_models_own_greedy_completions(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    ctx = _ctx(tiny_stream, tokenizer, accelerator)
    part = Recovery(RecoveryConfig(max_new_tokens=6))
    part.prepare(model, ctx)
    prompts = part.prompts(ctx)
    assert part.documents and len(part.documents) <= len(prompts)
    by_prompt = {p: d for p in prompts for d in part.documents if d.startswith(p + " ")}
    checked = 0
    for prompt in prompts[:12]:  # the reference: one prompt at a time through generate()
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0], skip_special_tokens=True)
        first = text[len(prompt):].strip().split(" ")
        sentence = prompt + " " + " ".join(first[: first.index(".") + 1] if "." in first else first)
        if prompt in by_prompt:
            assert by_prompt[prompt] == sentence.strip()
            checked += 1
    assert checked >= 8


def test_recovery_keeps_earlier_predictions_better_than_naive(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = lm.load(tiny_model_dir)
    ctx = _ctx(tiny_stream, tokenizer, accelerator)
    before = Recovery(RecoveryConfig())
    before.prepare(model, ctx)
    invariant = [p for p in tiny_stream.probes() if p.cohort == "invariant"]
    seen = {}
    for name in ("naive", "recovery"):
        model, tokenizer = lm.load(tiny_model_dir)
        model, stats = build_method(name, {"train": TRAIN}).apply(model, tiny_stream.stages[0], ctx)
        after = Recovery(RecoveryConfig())
        after.prepare(model, ctx)  # the same prompts, completed by the trained model
        seen[name] = {
            "same_completion": len(set(after.documents) & set(before.documents)) / len(before.documents),
            "invariant_em": float(score_probes(model, tokenizer, invariant).em.mean()),
            "tokens": stats.tokens_seen,
        }
    # measured (seed 0): same completion 0.636 -> 0.773, invariant EM 0.344 -> 0.411
    assert seen["recovery"]["same_completion"] > seen["naive"]["same_completion"] + 0.05, seen
    assert seen["recovery"]["invariant_em"] > seen["naive"]["invariant_em"], seen
    assert seen["recovery"]["tokens"] > seen["naive"]["tokens"]  # the documents were trained on


def test_prompts_skip_what_the_stage_changes_and_follow_what_was_taught(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    base = tiny_stream.base
    updated = Fact(base[0].id, base[0].subject, base[0].relation, "Somewhere Else", 1)
    learned = Fact("new1", "Zed Quorra", base[1].relation, base[1].object, 1)
    change = Change(stage=1, learn=(learned,), update=(ChangeRecord(1, "update", updated, base[0].object),), forget=(base[2],))
    part = Recovery(RecoveryConfig(samples=10_000))
    ctx = _ctx(tiny_stream, tokenizer, accelerator, change=change)
    prompts = part.prompts(ctx)
    assert len(prompts) == len(base) - 2  # the updated and the forgotten fact left out (learned is new)
    part.observe(model, change, ctx)
    assert "new1" in part.known and base[2].id not in part.known and part.known[base[0].id].object == "Somewhere Else"
    clone = Recovery(RecoveryConfig())
    clone.load_state_dict(part.state_dict())
    assert clone.known == part.known
    later = _ctx(tiny_stream, tokenizer, accelerator, change=Change(stage=2), stage=2)
    assert any(p.startswith("Zed Quorra") or "Zed Quorra" in p for p in clone.prompts(later))


@pytest.mark.parametrize("bad", [{"samples": 0}, {"max_new_tokens": 0}, {"batch_size": -1}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("recovery", {"recovery": bad})


def test_generation_leaves_the_model_in_its_mode(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    model.train()
    Recovery(RecoveryConfig(samples=4)).prepare(model, _ctx(tiny_stream, tokenizer, accelerator))
    assert model.training
    assert torch.is_grad_enabled()
