"""Unlearning metrics (../shared/METRICS.md, "Unlearning"): pure functions, numbers in,
numbers out. `ckl.evaluate.extraction` runs the model to get their inputs and
`ckl.results.summary` reads the store and calls them.

Accuracies are greedy exact match on statement probes unless a run says otherwise.

- Forget efficacy against the never-seen floor. `floor` is the accuracy on facts the
  model never saw: an imported scenario's `unseen` cohort (held-out records, never
  taught), or else, in the synthetic world, each stage's new facts just before that
  stage teaches them (row j-1 of cohort stage j). Efficacy is the share of the
  known-above-floor accuracy that the forgetting removed:
      efficacy = (before - after) / (before - floor)
  1 = forgotten down to the floor, 0 = nothing forgotten, > 1 = below the floor (the
  model now avoids the answer more than it would a fact it never saw, itself a sign
  of the deletion, per "Streisand" effects in the unlearning literature). Undefined when
  the facts were not known above the floor to begin with.
- Retention: after / before on the kept facts (all of them, and the boundary: the
  forgotten subjects' other facts, KnowUnDo's "forgetting boundary").
- Memorisation accuracy MA and extraction likelihood EL_n (Jang et al. 2023, "Knowledge
  Unlearning for Mitigating Privacy Risks in Language Models") for text targets.
- Fluency of answers to forgotten prompts: distinct-n of the generated answer (Li et al.
  2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"; low =
  repetitive, degenerate output) and the answer's perplexity under the base model
  (`ckl.model.scoring.perplexity_from_nll`; high = no longer language the base model would write).
- Recovery under a relearning attack (RESTOR, Rezaei et al. 2024; "Memory
  Self-Regeneration"): how much forgotten accuracy comes back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch


def forget_efficacy(before: float | None, after: float | None, floor: float | None) -> float | None:
    """(before - after) / (before - floor); None when undefined (see the module doc)."""
    if before is None or after is None or floor is None or before <= floor:
        return None
    return (before - after) / (before - floor)


def recovered_fraction(original: float | None, unlearned: float | None, attacked: float | None) -> float | None:
    """Share of the forgotten accuracy that the attack brought back:
    (attacked - unlearned) / (original - unlearned); None when nothing was forgotten."""
    if original is None or unlearned is None or attacked is None or original <= unlearned:
        return None
    return (attacked - unlearned) / (original - unlearned)


def memorization_accuracy(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MA per sequence (Jang et al. 2023): the share of target tokens that the model's
    teacher-forced argmax predicts, MA(x) = mean_t 1[argmax p(. | x_<t) = x_t].

    Args:
        predicted: (N, L) argmax token at each position (already aligned to `target`).
        target: (N, L) the true tokens.
        mask: (N, L) 1 where a position counts (the continuation's tokens), else 0.

    Returns:
        (N,) float tensor; NaN for a row without counted positions.
    """
    mask = mask.bool()
    hits = ((predicted == target) & mask).sum(1).float()  # (N,)
    return hits / mask.sum(1).float()


def ngrams(tokens: Sequence[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def ngram_overlap(generated: Sequence[int], reference: Sequence[int], n: int) -> float | None:
    """|ngrams(generated) & ngrams(reference)| / |ngrams(reference)| (distinct n-grams);
    None when the reference has no n-gram."""
    ref = ngrams(reference, n)
    if not ref:
        return None
    return len(ngrams(generated, n) & ref) / len(ref)


def extraction_likelihood(generations: Sequence[Sequence[int]], target: Sequence[int], starts: Sequence[int], n: int) -> float | None:
    """EL_n of one target (Jang et al. 2023): the mean over prefix lengths t of the n-gram
    overlap between the greedy continuation of target[:t] and the true rest target[t:].

    Args:
        generations: the greedy continuation for each start, at least as long as the rest.
        target: the token sequence (prompt + continuation).
        starts: the prefix lengths t, each with len(target) - t >= n.
        n: n-gram size.

    Returns:
        The mean overlap, or None when no start qualifies.
    """
    values = []
    for gen, t in zip(generations, starts):
        rest = list(target[t:])
        if len(rest) < n:
            continue
        value = ngram_overlap(list(gen)[: len(rest)], rest, n)
        if value is not None:
            values.append(value)
    return sum(values) / len(values) if values else None


def distinct_n(tokens: Sequence[int], n: int) -> float | None:
    """Distinct-n of one generation: distinct n-grams / all n-grams (None if it has none)."""
    total = len(tokens) - n + 1
    if total <= 0:
        return None
    return len(ngrams(tokens, n)) / total


# ReLearn's measures (Xu et al. 2025, "ReLearn: Unlearning via Learning for Large Language
# Models"; their evaluation code, zjunlp/unlearn, evals/evaluate.py, read for the formulas).
# The paper's KFR / KRR judge each answer with an entailment model and an entity match;
# no such model is available offline, so ckl reports their exact-match forms (METRICS.md):
#     KFR = share of forgotten facts no longer answered = 1 - forget accuracy at row T
#     KRR = share of kept facts still answered = kept accuracy at row T
# The Linguistic Score is computed as the paper does, from the generated answers.

_WORDS = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (a regex stand-in for NLTK's word_tokenize)."""
    return _WORDS.findall(text.lower())


def brunet_index(tokens: Sequence[str]) -> float | None:
    """Brunet's W = N ** (V ** -0.165) (N tokens, V distinct): lower = richer vocabulary.
    None for an empty text."""
    if not tokens:
        return None
    return len(tokens) ** (len(set(tokens)) ** -0.165)


def honore_statistic(tokens: Sequence[str], epsilon: float = 0.1) -> float | None:
    """Honore's R = 100 ln N / (1 - V1 / V + epsilon) (V1: words used once): higher =
    richer vocabulary. ReLearn's form, with its epsilon; None under two tokens."""
    if len(tokens) < 2:
        return None
    counts: dict[str, int] = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    once = sum(1 for c in counts.values() if c == 1)
    return 100 * math.log(len(tokens)) / (1 - once / len(counts) + epsilon)


def linguistic_score(ppl: float | None, brunet: float | None, honore: float | None) -> float | None:
    """ReLearn's Linguistic Score: the harmonic mean of sigmoid(-ln ppl),
    sigmoid(-ln Brunet) and sigmoid(ln Honore), each mean taken over the answers first.
    In (0, 1), higher = more fluent and varied; None when any input is missing."""
    if ppl is None or brunet is None or honore is None or min(ppl, brunet, honore) <= 0:
        return None
    sig = lambda x: 1 / (1 + math.exp(-x))
    parts = (sig(-math.log(ppl)), sig(-math.log(brunet)), sig(math.log(honore)))
    return 3 / sum(1 / p for p in parts)


def is_refusal(answer: Sequence[str], refusals: Sequence[Sequence[str]]) -> bool:
    """Whether a generated answer (its words) begins like one of the refusal sentences:
    the shorter of the two is a prefix of the longer. An empty answer is not a refusal."""
    if not answer:
        return False
    return any(list(r[: len(answer)]) == list(answer) if len(answer) <= len(r) else list(answer[: len(r)]) == list(r) for r in refusals)


def refusal_share(answers: Sequence[Sequence[str]], refusals: Sequence[Sequence[str]]) -> float | None:
    """The share of answers that are refusals (SafeEraser's safe answer refusal rate when
    the answers are to prompts that should be answered); None without answers."""
    if not answers:
        return None
    return sum(is_refusal(a, refusals) for a in answers) / len(answers)

