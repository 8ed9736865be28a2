"""REPAIR-style lifelong editing: MEMIT with a closed loop that checks every edit made so
far after each stage and re-edits the ones that failed or drifted (after "REPAIR: Robust
Editing via Progressive Adaptive Intervention and Reintegration", Wang et al. 2025).

Sequential editors lose earlier edits: each new batch is solved against the model as it
is, and the weights it writes overwrite part of what earlier batches wrote (the
editing-collapse study, docs/studies.md). REPAIR closes the loop. Here, each stage:

1. the stage's edits and updates are written with MEMIT (`ckl.methods.edit.memit`);
2. the edit memory is brought up to date: an edit or update of a fact replaces the
   remembered record of that fact (a newer object wins, so an old edit is never
   re-asserted against its update), a forget request drops it, and beyond `memory_size`
   the oldest records leave;
3. feedback: every remembered edit's statement probe is scored in one batched pass
   (greedy exact match of the new object, as efficacy is measured);
4. the failed ones are re-edited together as one MEMIT batch on the current model
   (reintegration), and steps 3-4 repeat up to `rounds` times or until none fails.

What each stage checked, found failed and re-edited is kept in the method's state (and
its totals are stored with every results row as `repair_*` notes), so a run shows how
much repair the loop needed.

Deviations: REPAIR edits through a dual memory (a side network of WISE-style knowledge
shards) with distribution-aware clustering of the batches and pruning of the memory
shards; ckl writes into the MLP weights with MEMIT and keeps the closed loop, the
re-editing of failures and the memory's upkeep, which is what the issue asks to measure.
Failure is judged on the statement probe only (the probe efficacy is measured on), not
on paraphrases, so the loop cannot overfit the held-out forms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ckl.core.checks import check_count
from ckl.data.facts import ChangeRecord, Fact, fact_row
from ckl.data.stream import Change
from ckl.methods.base import ApplyStats, StageContext, register_method
from ckl.methods.data._policies import recall
from ckl.methods.edit._requests import EDIT_KINDS, edit_records
from ckl.methods.edit.memit import Memit, MemitConfig, edited_layers


@dataclass
class RepairConfig(MemitConfig):
    rounds: int = field(default=2, metadata={"help": "most check-and-re-edit rounds after each stage (0: plain sequential MEMIT)"})
    memory_size: int = field(default=10000, metadata={"help": "most edits remembered and checked (the oldest leave first)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count(self.rounds, "rounds", low=0)
        check_count(self.memory_size, "memory_size")


class Repair(Memit):
    """MEMIT, then every remembered edit checked and the failed ones re-edited."""

    def __init__(self, config: RepairConfig):
        super().__init__(config)
        self.name = "repair"
        self.memory: dict[str, ChangeRecord] = {}  # fact id -> its latest edit (insertion order = age)
        self.history: list[dict] = []  # per stage: checked, failed and re-edited per round

    def apply(self, model, change: Change, ctx: StageContext) -> tuple[object, ApplyStats]:
        start = time.perf_counter()
        model, stats = super().apply(model, change, ctx)
        self._remember(change)
        layers = edited_layers(self.config, model)
        entry = {"stage": change.stage, "remembered": len(self.memory), "failed": [], "re_edited": 0}
        for _ in range(self.config.rounds):
            failed = self._failed(model, ctx)
            entry["failed"].append(len(failed))
            if not failed:
                break
            size = self.config.batch_size or len(failed)
            for begin in range(0, len(failed), size):
                stats.steps += self._edit_batch(model, failed[begin : begin + size], layers, ctx)
            entry["re_edited"] += len(failed)
        else:
            if self.config.rounds:
                entry["failed"].append(len(self._failed(model, ctx)))  # what is left after the last round
        self.history.append(entry)
        stats.seconds = time.perf_counter() - start
        return model, stats

    def _remember(self, change: Change) -> None:
        for record in edit_records(change):
            self.memory.pop(record.fact.id, None)  # re-inserted as the newest
            self.memory[record.fact.id] = record
        for fact in change.forget:
            self.memory.pop(fact.id, None)
        while len(self.memory) > self.config.memory_size:
            self.memory.pop(next(iter(self.memory)))

    def _failed(self, model, ctx: StageContext) -> list[ChangeRecord]:
        """The remembered edits whose statement probe no longer gives the new object."""
        records = list(self.memory.values())
        if not records:
            return []
        correct, _ = recall(model, ctx.tokenizer, [r.fact for r in records], ctx.relations)
        return [r for r, ok in zip(records, correct) if not ok]

    def row_notes(self) -> dict:
        if not self.history:
            return {}
        return {"repair_remembered": len(self.memory), "repair_re_edited": sum(e["re_edited"] for e in self.history),
                "repair_failed_left": self.history[-1]["failed"][-1] if self.history[-1]["failed"] else 0}

    def state_dict(self) -> dict:
        memory = [{"stage": r.stage, "kind": r.kind, "fact": fact_row(r.fact), "old_object": r.old_object} for r in self.memory.values()]
        return {"repair": {"memory": memory, "history": self.history}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        saved = state.get("repair", {"memory": [], "history": []})
        self.memory = {}
        for row in saved["memory"]:
            record = ChangeRecord(int(row["stage"]), str(row["kind"]), Fact(**row["fact"]), row.get("old_object"))
            self.memory[record.fact.id] = record
        self.history = list(saved["history"])


register_method("repair", RepairConfig, Repair, "REPAIR-style lifelong editing: MEMIT, then every remembered edit checked and the failed ones re-edited (Wang et al. 2025)", kinds=EDIT_KINDS)
