"""KG-RAG: retrieval along the fact graph, so that a question through two facts finds
both; the weights never change (after the knowledge-graph retrieval of Sun et al. 2024,
"Think-on-Graph: Deep and Responsible Reasoning of Large Language Model with Knowledge
Graph", which explores from the question's entities along relations to their
neighbours, and the retrieve-then-hop baselines of Zhong et al. 2023, "MQuAKE").

The store is RAG's (ckl.methods.retrieve.rag): one sentence per fact the stream has made
true, updates replacing the old object, forget requests removed at once. Each probe's
`top_k` best-matching facts (SQLite FTS5, BM25) are the first hop; every indexed fact
whose subject is a first-hop fact's object is the second ("Alda Venmore works for
Brightwave Systems" -> "Brightwave Systems is headquartered in Ostwick"), so a two-hop
probe ("The employer of Alda Venmore is headquartered in") has its answer in the
retrieved set, and an update of the first fact changes which second fact is reached:
the answer propagates without any edit to the second fact. The retrieved sentences go in
front of the prompt as in RAG; with `kcts: {hops: 2}` the same walk guides decoding
instead (ckl.methods.retrieve.kcts), which a model that cannot read its context needs.

Deviations from Think-on-Graph: no language model chooses the relations to follow (every
fact about the reached entity is taken: the model's own prompt decides which of their
objects it answers), at most two hops, and entities are matched by their exact name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckl.methods.base import register_method
from ckl.methods.retrieve.rag import RAG, RagConfig


@dataclass
class KgRagConfig(RagConfig):
    hops: int = field(default=2, metadata={"help": "2: the prompt's facts and every indexed fact about their objects; 1: plain RAG"})


class KgRag(RAG):
    name = "kg_rag"

    def __init__(self, config: KgRagConfig) -> None:
        super().__init__(config)


register_method("kg_rag", KgRagConfig, KgRag, "retrieval along the fact graph (FTS5, BM25, then one hop from each retrieved fact's object): two-hop questions find both facts; forgotten facts leave the index at once; no weight change", ["learn", "update", "edit", "forget"])
