"""Episodic hints: keep a hint only for what the model got wrong, and put the relevant hints
in front of its prompts at inference; the weights never change (after "JEF Hinter": hints
distilled from earlier failures, given back at inference time).

A retrieval method built on `rag` (its SQLite FTS5 index, BM25 ranking, exact deletion and
damage checks). Where RAG indexes every fact the stream has made true, `hints` first asks
the frozen model each fact's trained forms (statement and question probes, one batched
scoring pass) and writes a hint, the fact's statement in the copy-mix format, only for the
facts it does not answer: nothing for the base knowledge the model already holds, a hint
for a new fact it cannot know, for an updated fact it still answers with the old object,
and for a base fact it has lost. Deletions remove the hint at once (and a deleted fact is
never hinted again), as in RAG; the model's own weights still hold what it knew, so a
deletion of a fact it answers from memory is not applied by this method either (the
forget cohort shows it). The hint store is therefore the model's failures only: the
`state_bytes` of every row is its size, against RAG's index of every fact.

Deviations: JEF Hinter distils hints from an agent's failed trajectories with an LLM; here
a failure is a wrong greedy answer to a fact's probe and the hint is the fact itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ckl.core.checks import ConfigError
from ckl.data.stream import Change, make_probes
from ckl.methods.base import ApplyStats, StageContext, register_method
from ckl.methods.retrieve.rag import RAG, RagConfig


@dataclass
class HintsConfig(RagConfig):
    """`top_k` hints per prompt; `include_base`: check the base knowledge too (and hint what the model lost)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.history:  # a past version is no failure of the model's: nothing would decide whether to hint it
            raise ConfigError("history", "hints keeps the model's failures only; a time-aware index with history is rag's, kg_rag's and kcts's `history: true`")


class Hints(RAG):
    name = "hints"

    def __init__(self, config: HintsConfig) -> None:
        super().__init__(config)
        self.checked = 0  # facts asked so far
        self.hinted = 0  # of them, hints written

    def _failures(self, model, facts, ctx: StageContext) -> list:
        """The facts whose statement or question the model does not answer (greedy exact match)."""
        from ckl.model.scoring import score_probes  # evaluation sits downstream of methods

        if not facts:
            return []
        probes = make_probes(facts, ctx.relations, "hints", ctx.stage, "learn", ("statement", "question"), 1, qa_subjects=None)
        training = model.training
        scores = score_probes(model, ctx.tokenizer, probes)
        model.train(training)
        wrong = {p.fact_id for p, ok in zip(probes, scores.em) if not ok}
        self.checked += len(facts)
        self.hinted += len(wrong)
        return [f for f in facts if f.id in wrong]

    def apply(self, model, change: Change, ctx: StageContext):
        start = time.perf_counter()
        if not self.started:
            if self.config.include_base:
                base = [f for f in ctx.base if f.id not in self.forgotten]
                for f in self._failures(model, base, ctx):
                    self.facts[f.id] = self._entry(f, ctx.relations)
            self.started = True
        taught = [*change.learn, *(r.fact for r in (*change.update, *change.edit))]
        for f in taught:
            self.facts.pop(f.id, None)  # an older hint about the fact is stale either way
        for f in self._failures(model, taught, ctx):
            self.facts[f.id] = self._entry(f, ctx.relations)
        self._remove(change.forget)
        stats = ApplyStats(total_params=sum(p.numel() for p in model.parameters()))
        stats.seconds = time.perf_counter() - start
        return model, stats

    def row_notes(self) -> dict:
        notes = super().row_notes()
        if self.checked:
            notes["hinted_share"] = round(self.hinted / self.checked, 4)
        return notes

    def state_dict(self) -> dict:
        state = super().state_dict()
        return {"hints": {**state["rag"], "checked": self.checked, "hinted": self.hinted}}

    def load_state_dict(self, state: dict) -> None:
        own = dict(state.get("hints", {}))
        self.checked, self.hinted = int(own.pop("checked", 0)), int(own.pop("hinted", 0))
        super().load_state_dict({"rag": own})


register_method("hints", HintsConfig, Hints, "episodic hints: the frozen model is asked every fact; only the ones it gets wrong become hints, retrieved (FTS5, BM25) into its prompts; deletions remove them at once; no weight change", ["learn", "update", "edit", "forget"])
