"""ACU: forgetting is exact (the head after a forget request equals the head never fit on
the forgotten facts), the frozen model learns and updates facts through the analytic head
alone, and the head survives a checkpoint or is refused when damaged."""

import pytest
import torch

from ckl.data.stream import Change, make_probes
from ckl.methods.base import StageContext, build_method
from ckl.model.scoring import score_probes
from ckl.run.checkpoint import join_state, split_state
from tests.methods.edit.memory_helpers import load


def _ctx(stream, tokenizer, accelerator, change, base=None):
    return StageContext(stream.relations, stream.base if base is None else base, 1, 0, tokenizer, accelerator, change=change,
                        general_text=stream.general_train, qa_subjects=stream.qa_subjects)


@pytest.fixture(scope="module")
def forgot(tiny_stream, tiny_model_dir, accelerator):
    """ACU after stage 1 (learn, update, forget) and an ACU that never saw the forgotten facts."""
    change = tiny_stream.stages[0]
    assert change.forget and change.learn and change.update
    model, tokenizer = load(tiny_model_dir)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("acu")
    model, stats = method.apply(model, change, _ctx(tiny_stream, tokenizer, accelerator, change))
    assert stats.not_applied == {} and all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())

    gone = {f.id for f in change.forget}
    never = build_method("acu")
    clean, _ = load(tiny_model_dir)
    without = Change(1, learn=change.learn, update=change.update)
    clean, _ = never.apply(clean, without, _ctx(tiny_stream, tokenizer, accelerator, without, [f for f in tiny_stream.base if f.id not in gone]))
    return method, model, never, clean, tokenizer


def test_forgetting_gives_the_head_never_fit_on_the_forgotten_facts(forgot, tiny_stream):
    method, model, never, clean, tokenizer = forgot
    assert method.rows == never.rows and set(method.texts) == set(never.texts)
    scale = method.A.abs().max()
    assert (method.A - never.A).abs().max() <= 1e-6 * scale  # float tolerance: features are float32, computed in other batches
    assert (method.Q - never.Q).abs().max() <= 1e-6 * method.Q.abs().max()
    assert torch.allclose(method.W, never.W, rtol=1e-4, atol=1e-5)
    probes = tiny_stream.probes()
    a, b = score_probes(model, tokenizer, probes), score_probes(clean, tokenizer, probes)
    assert (a.em == b.em).all()
    assert torch.allclose(torch.tensor(a.logprob), torch.tensor(b.logprob), atol=1e-4)


def test_the_frozen_model_learns_updates_and_forgets_through_the_head(forgot, tiny_stream, tiny_model_dir):
    method, model, _, _, tokenizer = forgot
    change, relations = tiny_stream.stages[0], tiny_stream.relations
    base, _ = load(tiny_model_dir)

    def accuracy(m, facts):
        return score_probes(m, tokenizer, make_probes(facts, relations, "x", 1, "new", ("statement",), 10)).em.mean()

    learned, updated = list(change.learn), [r.fact for r in change.update]
    # measured on the tiny world: learned 0.04 -> 0.92, updated 0.00 -> 1.00, forgotten 1.00 -> 0.00
    assert accuracy(base, learned) <= 0.2 and accuracy(model, learned) >= 0.8
    assert accuracy(base, updated) <= 0.2 and accuracy(model, updated) >= 0.8
    assert accuracy(base, list(change.forget)) >= 0.9 and accuracy(model, list(change.forget)) <= 0.1
    touched = {f.id for f in (*change.learn, *change.forget)} | {r.fact.id for r in change.update}
    kept = [f for f in tiny_stream.base if f.id not in touched]
    assert accuracy(model, kept) >= accuracy(base, kept) - 0.1  # measured 0.94 against the base model's 0.97
    assert method.kept_outside_weights() == ["acu"]


def test_a_forgotten_fact_stays_out_when_later_stages_come(forgot, tiny_stream, accelerator):
    method, model, _, _, tokenizer = forgot
    later = tiny_stream.stages[1]
    method.apply(model, later, _ctx(tiny_stream, tokenizer, accelerator, later))
    assert not {f.id for f in tiny_stream.stages[0].forget} & set(method.texts)


def test_the_head_survives_a_checkpoint_and_a_damaged_one_is_refused(forgot, tiny_stream, tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    method, model, _, _, tokenizer = forgot
    data, tensors = split_state(method.state_dict())
    save_file(tensors, str(tmp_path / "state.safetensors"))
    again = build_method("acu")
    again.load_state_dict(join_state(data, tmp_path / "state.safetensors"))
    reloaded, _ = load(tiny_model_dir)
    reloaded = again.restore(reloaded)
    probes = tiny_stream.probes(kinds=("statement",))
    assert (score_probes(reloaded, tokenizer, probes).logprob == score_probes(model, tokenizer, probes).logprob).all()
    for damage in (lambda st: st["acu"].__setitem__("A", st["acu"]["A"][:-1]),
                   lambda st: st["acu"]["Q"].__setitem__((0, 0), float("nan")),
                   lambda st: st["acu"].__setitem__("forgotten", [next(iter(st["acu"]["texts"]))])):
        state = join_state(data, tmp_path / "state.safetensors")
        state["acu"] = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state["acu"].items()}
        damage(state)
        with pytest.raises(ValueError, match="damaged"):
            build_method("acu").load_state_dict(state)


def test_options_are_checked():
    for bad in ({"ridge": 0}, {"buffer": -1}, {"sharpness": "high"}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            build_method("acu", {"acu": bad})


def test_features_from_an_inner_block_line_up_in_every_scoring_path(tiny_stream, tiny_model_dir, accelerator):
    import copy

    from ckl.model.scoring import reference_score

    change = tiny_stream.stages[0]
    model, tokenizer = load(tiny_model_dir)
    method = build_method("acu", {"acu": {"layer": 1, "buffer": 256}})
    model, _ = method.apply(model, change, _ctx(tiny_stream, tokenizer, accelerator, change))
    probes = make_probes(list(change.learn)[:6], tiny_stream.relations, "x", 1, "new", ("statement",), 10)
    batched = score_probes(model, tokenizer, probes)  # positions picked by logits_to_keep
    one_by_one = [reference_score(model, tokenizer, p)[2] for p in probes]  # plain forward passes
    assert torch.allclose(torch.tensor(batched.logprob), torch.tensor(one_by_one, dtype=torch.float64), atol=1e-3)
    twin = copy.deepcopy(model)  # what the relearning attack trains: the copy carries its own head
    assert (score_probes(twin, tokenizer, probes).logprob == batched.logprob).all()
    with pytest.raises(ValueError, match="last block"):
        build_method("acu", {"acu": {"layer": 9}}).apply(load(tiny_model_dir)[0], change, _ctx(tiny_stream, tokenizer, accelerator, change))
