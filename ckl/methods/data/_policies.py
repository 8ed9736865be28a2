"""Which buffered facts the `replay` part mixes into an epoch: its `policy` option.

The buffer (what is held) is the same reservoir for every policy; a policy chooses, each
epoch, which of the held facts that the stage does not change are replayed:

- `reservoir`: a uniform sample, `fraction` of the epoch's facts (the default; Chaudhry
  et al. 2019).
- `balanced`: the same number of facts, spread evenly over groups (`balance_by`: the
  fact's relation, or its cohort = the stage that made the held version true, 0 for the
  base knowledge), so that a frequent relation or the large base cohort does not crowd
  the others out. Groups with too few facts give their share to the others.
- `spaced`: spaced repetition with a Leitner schedule (`LeitnerSchedule`).
- `budget`: compute-bounded rehearsal of what the current model has forgotten or is
  least sure of (`least_confident`).
- `influence`: the held facts whose training would help the rest most (`influence_scores`,
  after HESIT: Zhang et al. 2023, "Hyper-gradient-based exemplar strategy", which selects
  exemplars by their influence on the model's general performance, traced through
  first-order hyper-gradients without a Hessian).

Every choice is a function of the seed, the stage, the epoch and the model's weights, so
it is the same on every data-parallel process (each holds the same buffer and the same
weights); the training loop then shards the rendered documents.

`spaced` follows Kang et al. 2025, "Do Your Best and Get Enough Rest for Continual
Learning": review an item again only after a rest that grows as it keeps being recalled
(the forgetting curve flattens with each successful recall), and review it at once when
it is forgotten. Deviation: the paper realises this for a task's data as a whole (its
view-batch model: more views of a sample, a longer recall interval); here it is a
Leitner system per fact, with recall tested by the current model's greedy exact match on
the fact's statement probe when the fact is due (one batched forward over the due facts
per epoch), boxes 0..max_box and a review interval of 2^box epochs. A due fact that is
recalled moves up a box and rests; one that is not drops to box 0 and is replayed this
epoch (at most the epoch's `fraction` share: a random sample of them when more failed).

`budget` follows "An Efficient Rehearsal Scheme for Catastrophic Forgetting Mitigation
during Multi-stage Fine-tuning" (2024): rehearse the samples the current fine-tuning has
damaged, within a fixed rehearsal budget. Every `rescore_every` epochs a batched forward
scores every candidate's statement probe with the model being trained; the `budget`
facts replayed in each epoch are those it no longer gets right (greedy exact match), then
those with the lowest gold log-probability. Deviation: the paper estimates which samples
were damaged without scoring all of them (to save the forward passes); here the whole
buffer is scored, forward-only, which on small buffers costs far less than training on
them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from ckl.data.facts import Fact, Relation
from ckl.data.stream import make_probes

POLICIES = ("reservoir", "balanced", "spaced", "budget", "influence")


def even_quotas(sizes: Sequence[int], wanted: int, rng: random.Random) -> list[int]:
    """How many items to take from each group: as equal as the groups' sizes allow,
    summing to min(wanted, total); the last indivisible units go to random groups."""
    quotas = [0] * len(sizes)
    left = min(wanted, sum(sizes))
    open_ = [i for i, s in enumerate(sizes) if s > 0]
    while left > 0 and open_:
        share = left // len(open_)
        if share == 0:
            for i in rng.sample(open_, left):
                quotas[i] += 1
            break
        for i in open_:
            take = min(share, sizes[i] - quotas[i])
            quotas[i] += take
            left -= take
        open_ = [i for i in open_ if quotas[i] < sizes[i]]
    return quotas


def balanced_sample(pool: Sequence[Fact], wanted: int, rng: random.Random, key: Callable[[Fact], object]) -> list[Fact]:
    """`wanted` facts spread evenly over the groups of `key` (see `even_quotas`)."""
    groups: dict[object, list[Fact]] = defaultdict(list)
    for fact in pool:
        groups[key(fact)].append(fact)
    names = sorted(groups, key=str)
    quotas = even_quotas([len(groups[n]) for n in names], wanted, rng)
    return [f for n, q in zip(names, quotas) for f in rng.sample(groups[n], q)]


def group_key(balance_by: str) -> Callable[[Fact], object]:
    return (lambda f: f.relation) if balance_by == "relation" else (lambda f: f.valid_from)


def recall(model, tokenizer, facts: Sequence[Fact], relations: dict[str, Relation]) -> tuple[np.ndarray, np.ndarray]:
    """(greedy exact match, gold log-probability) of each fact's statement probe, in one
    batched scoring pass; the model's train/eval mode is kept."""
    from ckl.model.scoring import score_probes  # evaluation sits downstream of training

    if not facts:
        return np.zeros(0, dtype=bool), np.zeros(0)
    probes = make_probes(facts, relations, "replay", 0, "base", ("statement",), max_candidates=1)
    was_training = model.training
    try:
        scores = score_probes(model, tokenizer, probes)
    finally:
        model.train(was_training)
    return scores.em, scores.logprob


def least_confident(facts: Sequence[Fact], em: np.ndarray, logprob: np.ndarray, budget: int) -> list[Fact]:
    """The `budget` facts the model is least sure of: wrong ones first (greedy output is
    not the object), then by gold log-probability, lowest first; ties by fact id."""
    order = sorted(range(len(facts)), key=lambda i: (bool(em[i]), float(logprob[i]), facts[i].id))
    return [facts[i] for i in order[:budget]]


class LeitnerSchedule:
    """Spaced repetition per fact: box b means "review 2^b epochs after the last review".

    `clock` counts epochs across stages. A fact seen for the first time is due at once in
    box 0.
    """

    def __init__(self, max_box: int):
        self.max_box = max_box
        self.box: dict[str, int] = {}
        self.due_at: dict[str, int] = {}

    def due(self, facts: Sequence[Fact], clock: int) -> list[Fact]:
        return [f for f in facts if self.due_at.get(f.id, clock) <= clock]

    def review(self, facts: Sequence[Fact], recalled: Sequence[bool], clock: int) -> list[Fact]:
        """Record a review at `clock`; returns the facts that were not recalled (to replay)."""
        failed = []
        for fact, ok in zip(facts, recalled):
            box = min(self.box.get(fact.id, 0) + 1, self.max_box) if ok else 0
            self.box[fact.id] = box
            self.due_at[fact.id] = clock + 2**box if ok else clock + 1
            if not ok:
                failed.append(fact)
        return failed

    def forget(self, fact_id: str) -> None:
        self.box.pop(fact_id, None)
        self.due_at.pop(fact_id, None)

    def state(self) -> dict:
        return {"box": dict(self.box), "due_at": dict(self.due_at)}

    def load(self, state: dict) -> None:
        self.box = {k: int(v) for k, v in state.get("box", {}).items()}
        self.due_at = {k: int(v) for k, v in state.get("due_at", {}).items()}


def influence_scores(model, tokenizer, facts: Sequence[Fact], relations: dict[str, Relation], reference: Sequence[Fact], eps: float = 1e-3) -> np.ndarray:
    """First-order influence of training on each fact on the loss of the `reference`
    facts: grad L_reference . grad L_fact (a training step on the fact lowers the
    reference loss by about lr times this; HESIT's hyper-gradient without a Hessian).

    The dot products of all facts come from one gradient and two batched scoring passes:
    with d = grad L_reference / ||grad L_reference||, d . grad L_fact is the directional
    derivative of the fact's loss, (L_fact(theta + eps d) - L_fact(theta - eps d)) / 2 eps
    (central differences, the weights restored after), where L_fact is the answer's
    negative log-probability given its statement prompt. Returned as ||grad L_reference||
    times it, i.e. the dot product itself. Written by hand because no library computes
    per-example gradient alignments for a Hugging Face model batched like this; the
    scorer does the batching.
    """
    import torch

    from ckl.data.stream import statement_text
    from ckl.model.scoring import score_probes
    from ckl.train.batching import pack

    if not facts or not reference:
        return np.zeros(len(facts))
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    try:
        model.eval()
        input_ids, mask, labels = pack(tokenizer, [statement_text(f, relations[f.relation].templates[0]) for f in reference], 128)
        model.zero_grad(set_to_none=True)
        model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss.backward()
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        model.zero_grad(set_to_none=True)
        norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
        if not torch.isfinite(norm) or norm == 0:
            return np.zeros(len(facts))
        probes = make_probes(facts, relations, "influence", 0, "base", ("statement",), max_candidates=1)

        originals = [p.detach().clone() for p in params]

        def loss_at(sign: float) -> np.ndarray:
            with torch.no_grad():
                for p, p0, g in zip(params, originals, grads):
                    p.copy_(p0 + (sign * eps / float(norm)) * g.to(p.dtype))
            try:
                return -score_probes(model, tokenizer, probes).logprob
            finally:
                with torch.no_grad():
                    for p, p0 in zip(params, originals):
                        p.copy_(p0)  # bit for bit: training goes on from the same weights

        return (loss_at(1.0) - loss_at(-1.0)) / (2 * eps) * float(norm)
    finally:
        model.train(was_training)


def most_influential(facts: Sequence[Fact], scores: np.ndarray, wanted: int) -> list[Fact]:
    """The `wanted` facts with the highest influence, ties by fact id."""
    order = sorted(range(len(facts)), key=lambda i: (-float(scores[i]), facts[i].id))
    return [facts[i] for i in order[:wanted]]

