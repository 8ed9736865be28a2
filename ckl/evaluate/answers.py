"""What a model answers in words: each probe's free greedy answer, classified as the fact's
correct object, a former object of the same fact (stale), another object of the world (a
hallucinated object) or no object at all (`eval.answers` in an experiment; rows 0 and T).

Exact match says only whether the answer was right. What a wrong answer was matters for
the question KCTS asks (Choi et al. 2023, "KCTS: Knowledge-Constrained Tree Search Decoding
with Token-Level Hallucination Detection"): does the model state something the knowledge
does not support? On a fact store that is exact: an answer naming an entity of the world
that the store does not hold for that fact (neither its object now nor one it had) is a
hallucinated object; an answer naming no entity (a fragment, an unrelated word) says
nothing false about the fact. A method that guides decoding to retrieved objects (kcts,
`hard`) never leaves an answer without an object, so where retrieval finds the wrong fact
it hallucinates; a frozen model that does not know a new person may hallucinate or say
nothing.

The answer is decoded greedily from the probe as the method asks it (a retrieval method's
prompt, a KCTS method's guide: `ckl.model.scoring` SUPPORT, applied at every step exactly
as the scorer applies it), for as many tokens as the world's longest object and one more,
cut at the first stop token as the scorer's exact match is (`stop_token_mask`; leading
whitespace-only tokens open the answer; `answer_text`, the reference exact match's own
reading), and compared after `normalise_answer`; "correct" is therefore the scorer's greedy
exact match wherever its fast path and reference agree (tests/evaluate/test_answers.py
checks they agree probe by probe; they differ only on an answer that contains a stop
token, "St. Ives", which the synthetic world has none of). A two-hop probe's stale answer
is the one through the first hop's former object. The entities are every relation's candidate objects and every
object of the stream's facts, old ones included.

Groups: `known`, the probes whose answer is true at the end (the invariant facts, the
neighbourhoods, what the stages taught); `forget`, the facts asked to be forgotten (there
"correct" is a leak, "other_object" a replacement answer). The stale cohorts and the
never-seen facts are not classified: their answers are not true now.
"""

from __future__ import annotations

from collections.abc import Sequence

from ckl.data import cohorts
from ckl.data.facts import TWO_HOP, Probe
from ckl.data.stream import Stream
from ckl.evaluate.extraction import greedy_continuations
from ckl.model.scoring import SUPPORT, SUPPORT_HARD, SUPPORT_WEIGHT, answer_text, normalise_answer, stop_token_mask, vocab_size

LABELS = ("correct", "stale", "other_object", "no_object")
GROUPS = ("known", "forget")


def world_entities(stream: Stream) -> set[str]:
    """Every entity a probe's answer could name: the relations' candidate objects and the
    objects of every fact of the stream, old objects of updates and edits included."""
    out = {c for rel in stream.relations.values() for c in rel.candidates}
    out |= {f.object for f in (*stream.base, *stream.unseen)}
    for ch in stream.stages:
        out |= {f.object for f in (*ch.learn, *ch.forget)}
        out |= {r.fact.object for r in (*ch.update, *ch.edit)} | {r.old_object for r in (*ch.update, *ch.edit) if r.old_object}
    return out


def former_objects(stream: Stream) -> dict[tuple[str, str | None], set[str]]:
    """(fact id, None) -> the objects an update or edit of the stream replaced; (fact id,
    next relation) -> the two-hop answers through them (the answer a two-hop probe gives
    when it still goes through the old object: `two_hop_probes`' bridge)."""
    bridge = {(f.relation, f.subject): f.object for f in stream.invariant()}
    out: dict[tuple[str, str | None], set[str]] = {}
    for ch in stream.stages:
        for r in (*ch.update, *ch.edit):
            if not r.old_object:
                continue
            out.setdefault((r.fact.id, None), set()).add(r.old_object)
            for nxt, _ in stream.relations[r.fact.relation].two_hop:
                if (nxt, r.old_object) in bridge:
                    out.setdefault((r.fact.id, nxt), set()).add(bridge[(nxt, r.old_object)])
    return out


def _former_key(probe: Probe) -> tuple[str, str | None]:
    """A probe's key in `former_objects`: a two-hop probe's id ends with its next relation."""
    return (probe.fact_id, probe.id.rsplit("/", 1)[1] if probe.kind == TWO_HOP else None)


def group_of(probe: Probe) -> str | None:
    """`known`, `forget`, or None for a probe whose answer is not true at the end."""
    prefix, _ = cohorts.parse(probe.cohort)
    if prefix == cohorts.FORGET:
        return "forget"
    if prefix in (cohorts.INVARIANT, cohorts.STAGE, cohorts.LOCAL):
        return "known"
    return None


def classify(model, tokenizer, probes: Sequence[Probe], entities: set[str], former: dict[tuple[str, str | None], set[str]],
             batch_size: int = 128) -> list[str]:
    """One of LABELS per probe (see the module docstring), from one batched greedy decoding."""
    if not probes:
        return []
    encode = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731  as the scorer encodes
    prompts = encode([p.prompt for p in probes])
    supported = sorted({s for p in probes for s in ((p.meta or {}).get(SUPPORT) or ())})
    ids = dict(zip(supported, encode([" " + s for s in supported]))) if supported else {}
    guides = [((tuple(ids[s] for s in p.meta[SUPPORT] if ids.get(s)), float(p.meta.get(SUPPORT_WEIGHT, 0.0)), bool(p.meta.get(SUPPORT_HARD, False)))
               if (p.meta or {}).get(SUPPORT) else None) for p in probes]
    longest = max(len(t) for t in encode([" " + e for e in sorted(entities | {p.answer for p in probes})]))
    stop = stop_token_mask(tokenizer, vocab_size(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    gens = greedy_continuations(model, prompts, longest + 1, batch_size, pad, guides=guides if any(guides) else None, stop=stop)
    known = {normalise_answer(e) for e in entities}
    out = []
    for probe, gen in zip(probes, gens):
        text = answer_text(tokenizer, gen, stop)
        if text == normalise_answer(probe.answer):
            out.append("correct")
        elif text in {normalise_answer(o) for o in former.get(_former_key(probe), ())}:
            out.append("stale")
        elif text in known:
            out.append("other_object")
        else:
            out.append("no_object")
    return out


def shares(labels: Sequence[str]) -> dict[str, float | int]:
    """{"n": count, label: share of each of LABELS}."""
    n = len(labels)
    return {"n": n, **{label: (sum(x == label for x in labels) / n if n else 0.0) for label in LABELS}}


def row_notes(model, tokenizer, probes: Sequence[Probe], stream: Stream, batch_size: int = 128) -> dict:
    """{group: shares, "by_kind": {group: {kind: shares}}} for the groups that have probes."""
    mine = [(p, group_of(p)) for p in probes if group_of(p) is not None]
    labels = classify(model, tokenizer, [p for p, _ in mine], world_entities(stream), former_objects(stream), batch_size)
    out: dict = {}
    for group in GROUPS:
        got = [(p.kind, label) for (p, g), label in zip(mine, labels) if g == group]
        if got:
            out[group] = shares([label for _, label in got])
            out.setdefault("by_kind", {})[group] = {k: shares([label for kind, label in got if kind == k]) for k in sorted({k for k, _ in got})}
    return out
