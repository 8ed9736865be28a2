"""IKE: no weight changes; the edited facts' demonstrations are retrieved into their
prompts (statement and paraphrase) and nothing is shown below the similarity floor.

Whether a model *uses* the demonstration depends on pretraining with the copy mix
(ckl.data.copy_mix); the tiny test model is not trained with it, so the mechanism is asserted
at the prompt level here, and docs/editing.md reports the measured effect on the
CounterFact scenario's copy-mix model."""

import torch

from ckl.data.copy_mix import demonstration
from ckl.methods.base import build_method
from ckl.data.stream import make_probes
from tests.methods.edit.memory_helpers import load, stage_context


def test_ike_changes_prompts_not_weights(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = load(tiny_model_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("ike")
    change = tiny_stream.stages[0]
    model, stats = method.apply(model, change, stage_context(tiny_stream, tokenizer, accelerator))
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert stats.not_applied == {"forget": len(change.forget)}

    updated = [r.fact for r in change.update]
    probes = make_probes(updated, tiny_stream.relations, "stage1", 1, "update", ("statement", "paraphrase"), 10)
    shown = method.transform_probes(probes)
    assert [p.id for p in shown] == [p.id for p in probes]
    for before, after in zip(probes, shown):
        fact = next(f for f in updated if f.id == before.fact_id)
        demo = demonstration(tiny_stream.relations[fact.relation].templates[0].format(subject=fact.subject), fact.object)
        assert after.prompt == f"{demo} {before.prompt}"  # its own fact, right before the question


def test_ike_shows_nothing_below_the_similarity_floor_and_round_trips(tiny_stream, tiny_model_dir, accelerator):
    model, tokenizer = load(tiny_model_dir)
    method = build_method("ike", {"ike": {"min_similarity": 0.99, "k": 2}})
    method.apply(model, tiny_stream.stages[0], stage_context(tiny_stream, tokenizer, accelerator))
    unrelated = make_probes(tiny_stream.invariant()[:5], tiny_stream.relations, "invariant", 0, "base", ("question",), 10)
    assert method.transform_probes(unrelated) == unrelated
    again = build_method("ike")
    again.load_state_dict(method.state_dict())
    assert again.demos == method.demos
