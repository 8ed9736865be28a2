"""editing-collapse: do sequential ROME and MEMIT edits wear the model down gradually and
then catastrophically, and does MEMIT collapse later?

Paper: Gupta, Rao & Anumanchipalli 2024, "Model Editing at Scale leads to Gradual and
Catastrophic Forgetting". Editing GPT-2 XL and GPT-J one fact after another, it finds
the unedited knowledge and downstream ability fading over the edits, then a single edit
after which the model collapses; MEMIT lasts longer than ROME.

Here the study builds its own stream from the configured one (`derive`): `batches`
stages of `per_batch` edits each, of base facts of distinct people no stage of the
configured stream touches, each rewritten to another candidate object (seeded). ROME
(one edit after another) and MEMIT (one batch per stage) apply them to the base model
in sequence, with the settings that edit the default base model (docs/knowledge.md:
the subject's first token, ROME at layer 0, MEMIT at layers 0-1 with covariance weight
100, 50 steps). After every batch ckl scores every probe: the edits so far (efficacy),
their neighbours (locality), the untouched base knowledge, and held-out perplexity.

The collapse point: the first batch after which untouched accuracy falls below half its
value before any edit (the paper reads collapse off downstream accuracy; the threshold
is ours). Verdict: holds when MEMIT collapses later than ROME, or ROME collapses and MEMIT
does not; undecided when neither collapses within the edits made (say so: the run was
too short to tell).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.study._streams import one_fact_each, untouched_people, with_stages
from ckl.study.base import FAILS, HOLDS, UNDECIDED, Refused, Study, register_study


@dataclass
class EditingCollapseConfig:
    batches: int = field(default=20, metadata={"help": "batches of edits, applied in sequence (one stage each)"})
    per_batch: int = field(default=5, metadata={"help": "edits per batch (the default 20 x 5 fits the default world: 115 people no stage touches)"})
    threshold: float = field(default=0.5, metadata={"help": "collapse: untouched accuracy below this fraction of its value before the edits"})
    rome: dict = field(default_factory=lambda: {"subject_token": "first", "layer": 0, "steps": 50},
                       metadata={"help": "ROME's options (ckl methods: rome)"})
    memit: dict = field(default_factory=lambda: {"subject_token": "first", "layers": [0, 1], "covariance_weight": 100, "steps": 50},
                        metadata={"help": "MEMIT's options (ckl methods: memit)"})
    repair: dict | None = field(default_factory=lambda: {"subject_token": "first", "layers": [0, 1], "covariance_weight": 100, "steps": 50, "rounds": 2},
                                metadata={"help": "REPAIR's options (ckl methods: repair), run beside the two as MEMIT with its closed loop (not part of the verdict); null: not run"})

    def __post_init__(self) -> None:
        check_count(self.batches, "batches")
        check_count(self.per_batch, "per_batch")
        check_number(self.threshold, "threshold", low=0, low_open=True, high=1)
        for name in ("rome", "memit", "repair"):
            if name == "repair" and self.repair is None:
                continue
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, f"{name} must be a mapping of {name.upper()} options, got {getattr(self, name)!r}")


class EditingCollapse(Study):
    name = "editing-collapse"
    paper = 'Gupta et al. 2024, "Model Editing at Scale leads to Gradual and Catastrophic Forgetting"'
    question = "Do sequential edits erode untouched knowledge until a collapse, and does MEMIT collapse later than ROME?"
    Config = EditingCollapseConfig

    def methods(self) -> list[dict[str, Any]]:
        methods = [{"name": "rome", "rome": dict(self.config.rome)}, {"name": "memit", "memit": dict(self.config.memit)}]
        if self.config.repair is not None:
            methods.append({"name": "repair", "repair": dict(self.config.repair)})
        return methods

    def derive(self, stream):
        """`batches` stages of `per_batch` edits of base facts of distinct untouched people."""
        from ckl.data.facts import ChangeRecord, Fact
        from ckl.data.stream import Change

        c = self.config
        n = c.batches * c.per_batch
        people = untouched_people(stream)
        editable = lambda f: len(stream.relations[f.relation].candidates) > 1
        chosen = one_fact_each(people, n, f"editing-collapse/{c.batches}/{c.per_batch}", editable)
        if chosen is None:
            have = sum(any(editable(f) for f in facts) for facts in people.values())
            return Refused(f"{n} edits of distinct people need {n} untouched people with an editable fact; the stream has {have}")
        rng = random.Random(f"editing-collapse/objects/{n}")
        stages = []
        for j in range(1, c.batches + 1):
            edits = []
            for f in chosen[(j - 1) * c.per_batch : j * c.per_batch]:
                new = rng.choice([o for o in stream.relations[f.relation].candidates if o != f.object])
                edits.append(ChangeRecord(j, "edit", Fact(f.id, f.subject, f.relation, new, j), f.object))
            stages.append(Change(j, (), (), tuple(edits), ()))
        return with_stages(stream, stages, self.name)

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        from ckl.results.editing import editing_summary

        c = self.config
        numbers: dict[str, Any] = {}
        curves: dict[str, list[dict]] = {}
        for method in ("rome", "memit", "repair"):
            if method == "repair" and c.repair is None:
                continue
            per_seed = []
            for seed in seeds:
                summary = editing_summary(store, method, seed)
                if summary is None:
                    continue
                start = store.accuracy(method, seed)[0]["invariant"]
                ppl = [i["perplexity"] for i in store.stage_infos(method, seed)]
                curve = summary["curve"]
                collapse = collapse_point(curve, start, c.threshold)
                per_seed.append({"seed": seed, "collapse": collapse, "start": start, "curve": curve, "perplexity": ppl})
            if not per_seed:
                return self.result(UNDECIDED, f"{method} did not finish", numbers, [], seeds)
            collapses = [s["collapse"] for s in per_seed]
            numbers[method] = {
                "collapse_edits": collapses,
                "untouched_before": per_seed[0]["start"],
                "untouched_after": [s["curve"][-1]["untouched_acc"] for s in per_seed],
                "efficacy_after": [s["curve"][-1]["all"]["efficacy"] for s in per_seed],
                "perplexity": [[s["perplexity"][0], s["perplexity"][-1]] for s in per_seed],
            }
            curves[method] = per_seed
        total = c.batches * c.per_batch
        rome, memit = (_median_collapse(numbers[m]["collapse_edits"], total) for m in ("rome", "memit"))
        said = lambda m, v: f"{m} collapses after {v} edits" if v <= total else f"{m} does not collapse within {total} edits"
        line = f"{said('ROME', rome)}, {said('MEMIT', memit)} (median over seeds; untouched accuracy below {c.threshold:g} of its start)"
        if "repair" in numbers:
            efficacy = sum(numbers["repair"]["efficacy_after"]) / len(numbers["repair"]["efficacy_after"])
            line += f"; MEMIT with REPAIR's loop (not in the verdict): {said('it', _median_collapse(numbers['repair']['collapse_edits'], total))}, final efficacy {efficacy:.2f}"
        if rome > total and memit > total:
            verdict = UNDECIDED
        else:
            verdict = HOLDS if memit > rome else FAILS
        return self.result(verdict, line, numbers, self._panels(curves), seeds)

    def _panels(self, curves: dict[str, list[dict]]) -> list[dict]:
        def series(key):
            out = []
            for method, runs in curves.items():
                run = runs[0]
                out.append({"label": f"{method} (seed {run['seed']})", "x": [p["edits"] for p in run["curve"]], "y": [key(p) for p in run["curve"]]})
            return out

        return [
            {"title": "untouched knowledge over sequential edits", "xlabel": "edits so far", "ylabel": "accuracy", "series": series(lambda p: p["untouched_acc"])},
            {"title": "efficacy of every edit so far", "xlabel": "edits so far", "ylabel": "exact match", "series": series(lambda p: p["all"]["efficacy"])},
            {"title": "locality", "xlabel": "edits so far", "ylabel": "agreement with the unedited model", "series": series(lambda p: p["all"]["locality"])},
        ]


def collapse_point(curve: Sequence[dict], start: float, threshold: float) -> int | None:
    """The edits made when untouched accuracy first fell below `threshold` x `start` (a
    `sequential_curve`'s points), or None when it never did."""
    return next((p["edits"] for p in curve if p["untouched_acc"] is not None and p["untouched_acc"] < threshold * start), None)



def _median_collapse(collapses: list[int | None], total: int) -> float:
    """The median collapse point over seeds, a seed without collapse counting as total + 1."""
    import statistics

    return statistics.median(total + 1 if v is None else v for v in collapses)


register_study(EditingCollapse)
