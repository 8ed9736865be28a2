"""KCTS-style knowledge-constrained decoding: the fact store guides the answer token by
token instead of being read from the prompt; the weights never change (after Choi et al.
2023, "KCTS: Knowledge-Constrained Tree Search Decoding with Token-Level Hallucination
Detection").

KCTS steers a frozen model's decoding with a token-level signal of whether the partial
answer is supported by the knowledge (their RIPA classifier), either by weighting each next
token by it (knowledge-weighted decoding) or by tree search. Here the knowledge is the
stream's fact store, indexed and kept current exactly as `rag` keeps it (new facts in,
updates replacing the old object, forget requests out at once: ckl.methods.retrieve.rag),
and the signal is exact: for each probe the `top_k` best-matching facts are retrieved
(SQLite FTS5, BM25) and a next token is supported when the answer so far, followed by it,
is a prefix of one of their objects. Supported tokens gain `weight` in the logits (and
with `hard: true` every other token is ruled out wherever a supported one exists), which
the scorer applies in its one teacher-forced pass (ckl.model.scoring, "Knowledge-weighted
decoding"): greedy exact match, candidate ranking and log-probabilities all come from the
guided distribution. Nothing is put in the prompt, so unlike RAG it works with a model
that never learned to read its context; what it cannot do is answer when retrieval misses
(the row's `retrieval_recall` says how often), and with `hard` a fact the store no longer
holds (forgotten, or replaced by an update) is not produced when another supported answer
is available.

Deviations: the support signal is a lexical prefix match against retrieved objects, not a
learned token-level hallucination classifier, and decoding is weighted, not tree search
(the paper's KWD variant); answers are the store's objects, not free text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ckl.core.checks import ConfigError, check_number
from ckl.data.facts import Probe
from ckl.methods.base import register_method
from ckl.methods.retrieve.rag import RAG, RagConfig
from ckl.model.scoring import SUPPORT, SUPPORT_HARD, SUPPORT_WEIGHT


@dataclass
class KctsConfig(RagConfig):
    # One retrieved fact by default: the objects of a subject's other facts (a birth city
    # beside the residence asked about) would otherwise be supported too. On the tiny test
    # world: exact match on new facts 0.875 with top_k 1 and weight 10, 0.708 with top_k 3,
    # 0.417 with weight 5; 1.000 with `hard` (tests/methods/retrieve/test_kcts.py).
    top_k: int = field(default=1, metadata={"help": "retrieved facts whose objects guide each probe's answer"})
    weight: float = field(default=10.0, metadata={"help": "logit bonus of a token that continues a retrieved fact's object"})
    hard: bool = field(default=False, metadata={"help": "rule out every other token wherever a supported one exists (constrained decoding)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.weight, "weight", low=0)
        if not isinstance(self.hard, bool):
            raise ConfigError("hard", f"hard must be true or false, got {self.hard!r}")


class Kcts(RAG):
    name = "kcts"

    def __init__(self, config: KctsConfig) -> None:
        super().__init__(config)

    def ask(self, probe: Probe, ids: list[str]) -> Probe:
        """The probe as asked, carrying the objects of its retrieved facts as the answers
        its decoding is guided towards (retrieval and recall as for RAG)."""
        support = tuple(dict.fromkeys(self.facts[i][1] for i in ids))  # objects, best first, once each
        return replace(probe, meta={**probe.meta, SUPPORT: support, SUPPORT_WEIGHT: self.config.weight, SUPPORT_HARD: self.config.hard})


register_method("kcts", KctsConfig, Kcts, "knowledge-constrained decoding (KCTS-style): the objects of each probe's retrieved facts (FTS5, BM25) guide its answer token by token; nothing in the prompt, no weight change", ["learn", "update", "edit", "forget"])
