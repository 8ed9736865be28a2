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

With `history: true` (dated worlds, ckl.data.facts `dated` relations) the index is
time-aware: an update of a dated fact makes the old version false now, not false then, so
instead of leaving the index the old version stays in it as history, true from its own
`valid_from` until the update's stage and shown as its dated sentence ("New fact: In 2020,
X works for A."). Every indexed version carries its validity, and retrieval filters on it
(SQLite, in the same query as the BM25 match): a prompt that names a year as ckl's dated
text does ("As of 2020, X works for"; ckl.data.stream.prompt_year) finds only the versions
true in that year, an undated prompt only the current ones, so history never puts a stale
object in front of a plain question. The superseded version is the one the replay part's
`history` rehearses (ckl.data.stream.superseded). A forget request removes every version.
Walks (`hops: 2`) follow current facts only.

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
from ckl.data.facts import FIRST_YEAR, Fact, Probe, year_of
from ckl.data.stream import Change, dated_prompt, prompt_year, superseded
from ckl.methods.base import ApplyStats, Method, StageContext, register_method

_WORD = re.compile(r"\w+")


@dataclass
class RagConfig:
    top_k: int = field(default=3, metadata={"help": "retrieved fact sentences put before each probe"})
    include_base: bool = field(default=True, metadata={"help": "index the base knowledge K0 too (the whole fact store), not only what the stages teach"})
    hops: int = field(default=1, metadata={"help": "1: the facts that match the prompt; 2: also every indexed fact about a retrieved fact's object (one step along the fact graph)"})
    history: bool = field(default=False, metadata={"help": "dated worlds: an update's superseded version stays indexed as history, dated; a prompt that names a year ('As of 2020, ...') retrieves the versions true then, an undated one only the current ones"})

    def __post_init__(self) -> None:
        check_count(self.top_k, "top_k")
        if isinstance(self.hops, bool) or self.hops not in (1, 2):
            raise ConfigError("hops", f"hops must be 1 or 2, got {self.hops!r}")
        if not isinstance(self.include_base, bool):
            raise ConfigError("include_base", f"include_base must be true or false, got {self.include_base!r}")
        if not isinstance(self.history, bool):
            raise ConfigError("history", f"history must be true or false, got {self.history!r}")


class RAG(Method):
    name = "rag"
    kinds = frozenset({"learn", "update", "edit", "forget"})

    def __init__(self, config: RagConfig) -> None:
        self.config = config
        # entry id -> (sentence shown, object, search keys, subject), in insertion order; a
        # current version's entry id is its fact's id, a past one's is in `past`
        self.facts: dict[str, tuple[str, str, str, str]] = {}
        self.since: dict[str, int] = {}  # history: fact id -> the stage its current version became true
        self.past: dict[str, tuple[str, int, int]] = {}  # history: entry id -> (fact id, since, until) of a superseded version
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
                        self._index_current(f, ctx.relations)
            self.started = True
        self._keep_history(change, ctx)
        corrected = {r.fact.id for r in change.edit}
        for f in [*change.learn, *(r.fact for r in (*change.update, *change.edit))]:
            # an edit corrects a fact: the corrected object was true as long as the old one was
            since = self.since.get(f.id, 0) if f.id in corrected and f.id in self.facts else f.valid_from
            self._index_current(f, ctx.relations, since)
        self._remove(change.forget)
        stats = ApplyStats(total_params=sum(p.numel() for p in model.parameters()))
        stats.seconds = time.perf_counter() - start
        return model, stats

    def _index_current(self, fact: Fact, relations, since: int | None = None) -> None:
        if fact.id in self.past:  # a fact id that a past version's entry id took: that entry moves aside
            self._add_past(self.past.pop(fact.id), self.facts.pop(fact.id), taken=fact.id)
        self.facts.pop(fact.id, None)  # the new object replaces the old sentence (and goes last)
        self.facts[fact.id] = self._entry(fact, relations)
        if self.config.history:
            self.since[fact.id] = fact.valid_from if since is None else since

    def _add_past(self, version: tuple[str, int, int], entry: tuple[str, str, str, str], taken: str | None = None) -> None:
        """Index a superseded version under an id of its own: "<fact id>@<until>", with more
        "@" while that is taken (fact ids are free text)."""
        entry_id = f"{version[0]}@{version[2]}"
        while entry_id in self.facts or entry_id == taken:
            entry_id += "@"
        self.facts[entry_id] = entry
        self.past[entry_id] = version

    def _keep_history(self, change: Change, ctx: StageContext) -> None:
        """With `history`: the versions `change`'s updates of dated facts supersede stay in
        the index, dated, as true from their `since` until the update's stage."""
        if not self.config.history:
            return
        # the versions before the update, as indexed (a fact the index never held has no past
        # in it either: with `include_base: false`, K0's)
        known = {r.fact.id: Fact(r.fact.id, self.facts[r.fact.id][3], r.fact.relation, self.facts[r.fact.id][1], self.since.get(r.fact.id, 0))
                 for r in change.update if r.fact.id in self.facts}
        indexed = [r for r in change.update if r.fact.id in known]
        for old in superseded(indexed, ctx.relations, known):
            rel = ctx.relations[old.relation]
            shown = demonstration(dated_prompt(rel.templates[0], old.subject, year_of(old.valid_from)), old.object)
            self._add_past((old.id, old.valid_from, old.valid_until), (shown, old.object, self.keys(old, ctx.relations), old.subject))

    def _remove(self, facts: Sequence[Fact]) -> None:
        """Deletion from the index, at once: every version of each fact, now and for good."""
        gone = {f.id for f in facts}
        for entry_id in [e for e, (fid, _, _) in self.past.items() if fid in gone]:
            del self.past[entry_id], self.facts[entry_id]
        for fid in gone:
            self.facts.pop(fid, None)
            self.since.pop(fid, None)
        self.forgotten |= gone

    def fact_of(self, entry_id: str) -> str:
        """The fact an index entry states (a past version's entry has an id of its own)."""
        return self.past[entry_id][0] if entry_id in self.past else entry_id

    @staticmethod
    def keys(fact: Fact, relations) -> str:
        """The text a fact is found by: its relation's training statements and questions
        about its subject (not the held-out paraphrases), and its object."""
        rel = relations[fact.relation]
        return " ".join([*(t.format(subject=fact.subject) for t in (*rel.templates, *rel.questions)), fact.object])

    def _index(self) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:")
        # every entry with the stages it is true in: [since, until), until NULL for a current one
        db.execute("CREATE VIRTUAL TABLE facts USING fts5(keys, fact_id UNINDEXED, since UNINDEXED, until UNINDEXED)")
        db.executemany("INSERT INTO facts (rowid, keys, fact_id, since, until) VALUES (?, ?, ?, ?, ?)",
                       [(i + 1, self.facts[fid][2], fid, *(self.past[fid][1:] if fid in self.past else (self.since.get(fid, 0), None)))
                        for i, fid in enumerate(self.facts)])
        return db

    def retrieve(self, prompts: Sequence[str]) -> list[list[str]]:
        """The ids of the `top_k` best-matching facts for each prompt, best first (with
        `hops: 2`, each followed by the indexed facts about its object)."""
        if not self.facts:
            return [[] for _ in prompts]
        found = self._search(prompts)
        if self.config.hops == 1:
            return found
        walks: dict[int | None, dict[str, list[str]]] = {}  # stage asked about -> subject -> ids of the entries true then
        out = []
        for prompt, ids in zip(prompts, found):
            stage = self._stage_asked(prompt)
            if stage not in walks:
                about: dict[str, list[str]] = {}
                walks[stage] = about
                for fid, entry in self.facts.items():
                    if self._true_at(fid, stage):
                        about.setdefault(entry[3], []).append(fid)
            walked = list(ids)
            for fid in ids:
                walked += [nxt for nxt in walks[stage].get(self.facts[fid][1], ()) if nxt not in walked]
            out.append(walked)
        return out

    def _stage_asked(self, prompt: str) -> int | None:
        """With `history`, the stage of the year `prompt` names (None: undated, or history off)."""
        year = prompt_year(prompt) if self.config.history else None
        return None if year is None else year - FIRST_YEAR

    def _true_at(self, entry_id: str, stage: int | None) -> bool:
        """Whether an entry is retrievable for a prompt about `stage` (None: now)."""
        if entry_id in self.past:
            _, since, until = self.past[entry_id]
            return stage is not None and since <= stage < until
        return stage is None or self.since.get(entry_id, 0) <= stage

    def _search(self, prompts: Sequence[str]) -> list[list[str]]:
        """The ids of the `top_k` entries whose keys best match each prompt (BM25), best
        first; with `history`, of the versions true in the year the prompt names, or of the
        current ones when it names none."""
        db = self._index()
        out = []
        try:
            for prompt in prompts:
                words = sorted({w.lower() for w in _WORD.findall(prompt)})
                if not words:
                    out.append([])
                    continue
                query = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
                when, args = "", ()
                if self.config.history:  # the filter `_true_at` states, in SQL
                    stage = self._stage_asked(prompt)
                    if stage is None:
                        when = " AND until IS NULL"
                    else:
                        when, args = " AND since <= ? AND (until IS NULL OR until > ?)", (stage, stage)
                rows = db.execute(f"SELECT fact_id FROM facts WHERE facts MATCH ?{when} ORDER BY bm25(facts), rowid LIMIT ?",
                                  (query, *args, self.config.top_k)).fetchall()
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
                hits += any(self.fact_of(i) == probe.fact_id for i in ids)
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
        state = {"started": self.started, "facts": [[fid, *entry] for fid, entry in self.facts.items()], "forgotten": sorted(self.forgotten)}
        if self.config.history:
            state |= {"since": dict(self.since), "past": [[e, *v] for e, v in self.past.items()]}
        return {"rag": state}

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
        since, past = state.get("since", {}), state.get("past", [])
        is_stage = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0  # noqa: E731
        if not isinstance(since, dict) or not all(isinstance(k, str) and is_stage(v) for k, v in since.items()):
            raise damaged("the stages of the current versions are not a mapping of fact ids to stages")
        if not isinstance(past, list):
            raise damaged("the past versions are not a list")
        self.since, self.past = dict(since), {}
        for entry in past:
            # [entry id, fact id, since, until]: a superseded version, indexed, of a fact not forgotten
            if not (isinstance(entry, list) and len(entry) == 4 and all(isinstance(x, str) for x in entry[:2])
                    and is_stage(entry[2]) and is_stage(entry[3]) and entry[2] < entry[3]
                    and entry[0] in self.facts and entry[0] != entry[1] and entry[1] not in self.forgotten
                    and entry[0] not in self.past):
                raise damaged(f"past version {entry!r:.120}")
            self.past[entry[0]] = (entry[1], entry[2], entry[3])
        if (self.past or self.since) and not self.config.history:
            raise damaged("it keeps history, but this run's configuration has history off")
        if self.config.history and set(self.since) != set(self.facts) - set(self.past):
            raise damaged("the current versions and the stages they became true in do not match")


register_method("rag", RagConfig, RAG, "retrieval over the fact store (SQLite FTS5, BM25): every probe gets its best-matching facts in the prompt; forgotten facts leave the index at once; no weight change", ["learn", "update", "edit", "forget"])
