"""Replay policies: balanced replay gives every relation (or cohort) the same count, spaced
repetition replays forgotten facts often and lets recalled ones rest for growing
intervals, and the budget policy replays the least confident facts and never more than
its budget."""

import random
from collections import Counter

import pytest
import torch

from ckl.model import lm
from ckl.data.facts import Fact
from ckl.methods.base import StageContext, build_method
from ckl.methods.data.replay import Replay, ReplayConfig
from ckl.methods.data._policies import LeitnerSchedule, balanced_sample, even_quotas, recall
from ckl.data.stream import Change, make_probes


def _facts(n, relation, prefix, stage=0):
    return [Fact(f"{prefix}{i}", f"Person {prefix}{i}", relation, "X", stage) for i in range(n)]


def _ctx(stream, tokenizer, accelerator, epoch=0):
    change = stream.stages[0]
    return StageContext(stream.relations, stream.base, 1, 0, tokenizer, accelerator, change=change, epoch=epoch)


def test_balanced_gives_equal_counts_per_relation():
    pool = _facts(100, "employer", "a") + _facts(10, "birthplace", "b") + _facts(10, "hobby", "c")
    picked = balanced_sample(pool, 30, random.Random(0), key=lambda f: f.relation)
    assert Counter(f.relation for f in picked) == {"employer": 10, "birthplace": 10, "hobby": 10}
    assert len({f.id for f in picked}) == 30
    # a small group gives its share to the others; the total is kept
    picked = balanced_sample(pool[:100] + pool[100:103], 30, random.Random(0), key=lambda f: f.relation)
    assert Counter(f.relation for f in picked) == {"employer": 27, "birthplace": 3}
    assert even_quotas([5, 5, 5], 7, random.Random(0)) in ([3, 2, 2], [2, 3, 2], [2, 2, 3])


def test_balanced_by_cohort_through_the_replay_part():
    base = _facts(200, "employer", "k")
    part = Replay(ReplayConfig(fraction=0.5, policy="balanced", balance_by="cohort"))
    part.observe(None, Change(stage=1, learn=tuple(_facts(20, "employer", "s", stage=1))), _base_ctx(base))
    stage_facts = _facts(40, "employer", "new", stage=2)
    extra = part.extra_facts(stage_facts, _base_ctx(base, stage=2), random.Random(0))
    assert Counter(f.valid_from for f in extra) == {0: 20, 1: 20}  # not ~36 base : 4 stage-1 as uniform would give


def _base_ctx(base, stage=1):
    return StageContext(relations={}, base=base, stage=stage, seed=0, tokenizer=None, accelerator=None, change=Change(stage=stage))


def test_leitner_intervals_grow_while_recalled_and_reset_when_forgotten():
    schedule = LeitnerSchedule(max_box=3)
    fact = _facts(1, "employer", "f")
    reviews = []
    for clock in range(40):
        if schedule.due(fact, clock):
            reviews.append(clock)
            schedule.review(fact, [clock < 20], clock)  # recalled until epoch 20, then forgotten
    assert reviews[:5] == [0, 2, 6, 14, 22]  # rests of 2, 4, 8, then 8 (box 3 is the top)
    assert reviews[5:] == list(range(23, 40))  # forgotten at 22: reviewed every epoch from then


def test_spaced_replays_forgotten_facts_more_often_than_recalled_ones(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = Replay(ReplayConfig(fraction=0.9, policy="spaced"))
    ctx = _ctx(tiny_stream, tokenizer, accelerator)
    part.prepare(model, ctx)
    held = part._ensure(ctx).facts
    recalled, _ = recall(model, tokenizer, held, tiny_stream.relations)
    known = {f.id for f, ok in zip(held, recalled) if ok}
    assert 0 < len(known) < len(held)  # the tiny model knows some base facts and not others
    counts = Counter()
    stage_facts = tiny_stream.stages[0].taught()
    for epoch in range(8):
        ctx.epoch = epoch
        counts.update(f.id for f in part.extra_facts(stage_facts, ctx, random.Random(epoch)))
    failed = [f.id for f in held if f.id not in known and f.id not in ctx.change.touched()]
    assert failed and all(counts[i] == 8 for i in failed)  # replayed every epoch
    assert all(counts[i] == 0 for i in known)  # recalled at every review: they rest
    assert {part.schedule.box[i] for i in known if i in part.schedule.box} == {3}  # reviewed at 0, 2, 6


def test_budget_replays_the_least_confident_and_never_exceeds_the_budget(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = Replay(ReplayConfig(policy="budget", budget=10))
    ctx = _ctx(tiny_stream, tokenizer, accelerator)
    part.prepare(model, ctx)
    stage_facts = tiny_stream.stages[0].taught()
    chosen = part.extra_facts(stage_facts, ctx, random.Random(0))
    assert len(chosen) == 10
    pool = [f for f in part.buffer.facts if f.id not in ctx.change.touched()]
    correct, logprob = recall(model, tokenizer, pool, tiny_stream.relations)
    score = {f.id: (bool(c), float(lp)) for f, c, lp in zip(pool, correct, logprob)}
    picked = [score[f.id] for f in chosen]
    rest = [s for i, s in score.items() if i not in {f.id for f in chosen}]
    assert max(picked) <= min(rest)  # wrong before right, then by gold log-probability
    wrong = sum(not c for c, _ in score.values())
    assert wrong > 0 and sum(not c for c, _ in picked) == min(10, wrong)  # every forgotten fact first
    small = Replay(ReplayConfig(policy="budget", budget=1000))
    small.prepare(model, ctx)
    assert len(small.extra_facts(stage_facts, ctx, random.Random(0))) == len(pool)


@pytest.mark.parametrize("policy", ["balanced", "spaced", "budget", "influence"])
def test_policies_train_deterministically(policy, tiny_stream, tiny_model_dir, accelerator):
    weights = []
    for _ in range(2):
        model, tokenizer = lm.load(tiny_model_dir)
        method = build_method("replay", {"train": {"epochs": 3, "lr": 3e-3}, "replay": {"policy": policy, "budget": 8}})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, stats = method.apply(model, tiny_stream.stages[0], _ctx(tiny_stream, tokenizer, accelerator))
        assert stats.steps > 0
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_spaced_schedule_survives_a_checkpoint(tiny_stream, tiny_model, accelerator):
    model, tokenizer = tiny_model
    part = Replay(ReplayConfig(policy="spaced"))
    ctx = _ctx(tiny_stream, tokenizer, accelerator)
    part.prepare(model, ctx)
    part.extra_facts(tiny_stream.stages[0].taught(), ctx, random.Random(0))
    part.finish(model, ctx)
    clone = Replay(ReplayConfig(policy="spaced"))
    clone.load_state_dict(part.state_dict())
    assert clone.schedule.box == part.schedule.box and clone.schedule.due_at == part.schedule.due_at
    assert clone.clock == part.clock == 1


@pytest.mark.parametrize("bad", [{"policy": "lru"}, {"balance_by": "subject"}, {"budget": 0}, {"max_box": -1}, {"rescore_every": 0}])
def test_bad_policy_options_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_method("replay", {"replay": bad})


def test_influence_scores_match_exact_gradient_dot_products(tiny_stream, tiny_model):
    """The batched central-difference scores equal grad L_reference . grad L_fact computed
    one fact at a time by backpropagation, and the weights come back bit for bit."""
    from ckl.data.stream import statement_text
    from ckl.methods.data._policies import influence_scores, most_influential
    from ckl.train.batching import pack

    model, tokenizer = tiny_model
    facts, reference = tiny_stream.invariant()[:8], tiny_stream.invariant()[8:24]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = influence_scores(model, tokenizer, facts, tiny_stream.relations, reference)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    def grad(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    model.eval()
    input_ids, mask, labels = pack(tokenizer, [statement_text(f, tiny_stream.relations[f.relation].templates[0]) for f in reference], 128)
    g_ref = grad(model(input_ids=input_ids, attention_mask=mask, labels=labels).loss)
    exact = []
    for probe in make_probes(facts, tiny_stream.relations, "x", 0, "base", ("statement",), 1):
        prompt = tokenizer(probe.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(" " + probe.answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        nll = model(input_ids=ids, labels=labels).loss * len(answer)  # the answer's summed negative log-probability
        exact.append(float(g_ref @ grad(nll)))
    exact = torch.tensor(exact)
    assert torch.corrcoef(torch.stack([exact, torch.tensor(scores, dtype=exact.dtype)]))[0, 1] > 0.99
    assert most_influential(facts, scores, 3) == [facts[i] for i in torch.argsort(torch.tensor(scores), descending=True, stable=True)[:3].tolist()]
