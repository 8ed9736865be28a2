"""RAG: retrieval over the fact store, the model's weights never change (Lewis et al.
2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks"; here the
retriever is lexical, as in the BM25 baselines of that line of work).

The index holds one sentence per fact the stream has made true so far: the base
knowledge K0 (with `include_base`) and every stage's new facts, updated facts with their
new object (the old sentence is replaced, so a stale object is never retrieved again),
edits likewise, and forget requests removed from it at once: a forgotten fact is never
retrieved again (tests/methods/retrieve/test_rag.py checks exactly that). Each probe's
prompt gets its `top_k` best-matching sentences in front, the best one nearest the
question, ranked by SQLite's FTS5 full-text index with its BM25 ranking: a real
retrieval library that ships with Python's sqlite3, so nothing is written by hand but
the query (the prompt's words, OR-ed). A fact is found by the words of every way the
training text states or asks it (its relation's statement templates and question forms
with its subject; never the held-out paraphrase templates): a probe phrased with another
training template than the shown sentence's still finds it. A held-out paraphrase uses
words no training template has, so lexical retrieval finds its fact less often (recall@2
0.43 against 1.00 for statements and questions on the tiny test world): the recall stored
with every row shows it.

The sentences use the in-context format ckl's copy mix teaches (`ckl.data.copy_mix`,
"New fact: ..."): a tiny model trained from scratch reads facts from its context only if
its pretraining taught it to (`PretrainConfig.copy_fraction`), as for IKE.

Reported with every row (the row's notes, `retrieval_recall`): recall@k, the share of
probes about an indexed fact whose own sentence was among the retrieved ones.

With `hops: 2` retrieval also walks the fact graph one step (`kg_rag`,
ckl.methods.retrieve.kg_rag): every indexed fact whose subject is a retrieved fact's
object joins it, after it, so that a two-hop question finds both of its facts.

Deviations from the paper: no dense retriever and no training of the retriever or the
generator; retrieval is per probe prompt, of sentences rendered from the fact store.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ckl.core.checks import ConfigError, check_count
from ckl.data.copy_mix import demonstration
from ckl.data.facts import Fact, Probe
from ckl.data.stream import Change
from ckl.methods.base import ApplyStats, Method, StageContext, register_method

_WORD = re.compile(r"\w+")


@dataclass
class RagConfig:
    top_k: int = field(default=3, metadata={"help": "retrieved fact sentences put before each probe"})
    include_base: bool = field(default=True, metadata={"help": "index the base knowledge K0 too (the whole fact store), not only what the stages teach"})
    hops: int = field(default=1, metadata={"help": "1: the facts that match the prompt; 2: also every indexed fact about a retrieved fact's object (one step along the fact graph)"})

    def __post_init__(self) -> None:
        check_count(self.top_k, "top_k")
        if isinstance(self.hops, bool) or self.hops not in (1, 2):
            raise ConfigError("hops", f"hops must be 1 or 2, got {self.hops!r}")
        if not isinstance(self.include_base, bool):
            raise ConfigError("include_base", f"include_base must be true or false, got {self.include_base!r}")


class RAG(Method):
    name = "rag"
    kinds = frozenset({"learn", "update", "edit", "forget"})

    def __init__(self, config: RagConfig) -> None:
        self.config = config
        self.facts: dict[str, tuple[str, str, str, str]] = {}  # fact id -> (sentence shown, object, search keys, subject), in insertion order
        self.started = False  # K0 indexed (with include_base)
        self.forgotten: set[str] = set()  # ids of every fact a forget request removed: never indexed again
        self.recall: float | None = None  # recall@k of the last `transform_probes`

    @staticmethod
    def sentence(fact: Fact, relations) -> str:
        return demonstration(relations[fact.relation].templates[0].format(subject=fact.subject), fact.object)

    def _entry(self, fact: Fact, relations) -> tuple[str, str, str, str]:
        return self.sentence(fact, relations), fact.object, self.keys(fact, relations), fact.subject

    def apply(self, model, change: Change, ctx: StageContext):
        start = time.perf_counter()
        if not self.started:
            if self.config.include_base:
                for f in ctx.base:
                    if f.id not in self.forgotten:
                        self.facts[f.id] = self._entry(f, ctx.relations)
            self.started = True
        for f in [*change.learn, *(r.fact for r in (*change.update, *change.edit))]:
            self.facts.pop(f.id, None)  # the new object replaces the old sentence
            self.facts[f.id] = self._entry(f, ctx.relations)
        for f in change.forget:
            self.facts.pop(f.id, None)  # deleted from the index at once
            self.forgotten.add(f.id)
        stats = ApplyStats(total_params=sum(p.numel() for p in model.parameters()))
        stats.seconds = time.perf_counter() - start
        return model, stats

    @staticmethod
    def keys(fact: Fact, relations) -> str:
        """The text a fact is found by: its relation's training statements and questions
        about its subject (not the held-out paraphrases), and its object."""
        rel = relations[fact.relation]
        return " ".join([*(t.format(subject=fact.subject) for t in (*rel.templates, *rel.questions)), fact.object])

    def _index(self) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:")
        db.execute("CREATE VIRTUAL TABLE facts USING fts5(keys, fact_id UNINDEXED)")
        db.executemany("INSERT INTO facts (rowid, keys, fact_id) VALUES (?, ?, ?)",
                       [(i + 1, self.facts[fid][2], fid) for i, fid in enumerate(self.facts)])
        return db

    def retrieve(self, prompts: Sequence[str]) -> list[list[str]]:
        """The ids of the `top_k` best-matching facts for each prompt, best first (with
        `hops: 2`, each followed by the indexed facts about its object)."""
        if not self.facts:
            return [[] for _ in prompts]
        found = self._search(prompts)
        if self.config.hops == 1:
            return found
        about: dict[str, list[str]] = {}  # subject -> ids of the indexed facts about it
        for fid, entry in self.facts.items():
            about.setdefault(entry[3], []).append(fid)
        out = []
        for ids in found:
            walked = list(ids)
            for fid in ids:
                walked += [nxt for nxt in about.get(self.facts[fid][1], ()) if nxt not in walked]
            out.append(walked)
        return out

    def _search(self, prompts: Sequence[str]) -> list[list[str]]:
        """The ids of the `top_k` facts whose keys best match each prompt (BM25), best first."""
        db = self._index()
        out = []
        try:
            for prompt in prompts:
                words = sorted({w.lower() for w in _WORD.findall(prompt)})
                if not words:
                    out.append([])
                    continue
                query = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
                rows = db.execute("SELECT fact_id FROM facts WHERE facts MATCH ? ORDER BY bm25(facts), rowid LIMIT ?",
                                  (query, self.config.top_k)).fetchall()
                out.append([r[0] for r in rows])
        finally:
            db.close()
        return out

    def transform_probes(self, probes: Sequence[Probe]) -> list[Probe]:
        """The probes with their retrieved sentences in front of the prompt (the best
        nearest the question); `recall` is set to recall@k over probes of indexed facts."""
        if not self.facts or not probes:
            self.recall = None
            return list(probes)
        found = self.retrieve([p.prompt for p in probes])
        out, hits, asked = [], 0, 0
        for probe, ids in zip(probes, found):
            if probe.fact_id in self.facts and probe.change != "forget":
                asked += 1
                hits += probe.fact_id in ids
            out.append(self.ask(probe, ids))
        self.recall = hits / asked if asked else None
        return out

    def ask(self, probe: Probe, ids: list[str]) -> Probe:
        """`probe` as the model is asked it, given its retrieved fact ids (best first): with
        their sentences in front of the prompt, the best nearest the question."""
        prefix = " ".join(self.facts[i][0] for i in reversed(ids))
        return replace(probe, prompt=f"{prefix} {probe.prompt}") if prefix else probe

    def row_notes(self) -> dict:
        return {} if self.recall is None else {"retrieval_recall": round(self.recall, 4)}

    def kept_outside_weights(self) -> list[str]:
        return [self.name]  # the knowledge is in the index

    def state_dict(self) -> dict:
        return {"rag": {"started": self.started, "facts": [[fid, *entry] for fid, entry in self.facts.items()], "forgotten": sorted(self.forgotten)}}

    def load_state_dict(self, state: dict) -> None:
        state = state.get("rag", {})
        damaged = lambda why: ValueError(f"rag: the saved index is damaged ({why}); discard the checkpoint and run again")
        self.started = state.get("started", False)
        facts, forgotten = state.get("facts", []), state.get("forgotten", [])
        if not isinstance(self.started, bool) or not isinstance(facts, list) or not isinstance(forgotten, list):
            raise damaged("its fields have the wrong types")
        if facts and not self.started:
            raise damaged("facts are indexed but the index is marked not started: K0 would be indexed again")
        self.forgotten = {str(x) for x in forgotten}
        self.facts = {}
        for entry in facts:
            # [id, sentence, object, keys, subject]: the object and subject are in the sentence and the keys
            if not (isinstance(entry, list) and len(entry) == 5 and all(isinstance(x, str) for x in entry)
                    and entry[2] in entry[1] and entry[2] in entry[3] and entry[4] in entry[1] and entry[4] in entry[3]):
                raise damaged(f"entry {entry!r:.120}")
            if entry[0] in self.facts or entry[0] in self.forgotten:
                raise damaged(f"fact {entry[0]!r} is listed twice or is both indexed and forgotten")
            self.facts[entry[0]] = (entry[1], entry[2], entry[3], entry[4])


register_method("rag", RagConfig, RAG, "retrieval over the fact store (SQLite FTS5, BM25): every probe gets its best-matching facts in the prompt; forgotten facts leave the index at once; no weight change", ["learn", "update", "edit", "forget"])
