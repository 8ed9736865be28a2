"""relearning: after unlearning, do a few steps of fine-tuning on other forgotten facts
bring back the ones never shown?

Papers: Rezaei et al. 2024, "RESTOR: Knowledge Recovery through Machine Unlearning", and
the "memory self-regeneration" line of work: knowledge removed by unlearning often
returns after brief fine-tuning, so the unlearning had hidden it, not removed it.

Here the study builds its own stream from the configured one (`derive`): one stage that
asks to forget `forget` base facts, one per untouched person (each person's other facts
are the boundary). Each unlearning method in `methods` runs on it; then ckl's relearning
attack (ckl.run.attack, `partial`) fine-tunes a copy of the unlearned model on half of
the forgotten facts and re-probes the other half, scoring them along the way (`curve`
points per tenfold of steps). Recovered fraction at step k = (accuracy at k - accuracy
when unlearned) / (accuracy before unlearning - accuracy when unlearned), on the facts the
attack never showed (ckl.evaluate.unlearning.recovered_fraction).

Deviation: the papers attack with related or benign corpora on large models; here the
attack data are other forgotten facts of the same kind, the setting in which a model that
truly lost the facts has least to gain and a model that hid them most.

The recovered fraction is read at its best step of the curve (an attacker stops where
recovery is highest: on small models it can rise and then fall again as the attack
overfits its own facts) and at the attack's last step; both are reported. At every step
the control's gain is taken off first: the accuracy the same attack brings to facts the
model was never taught (the stream's `unseen` facts; the derived stream has the configured
stream's new people for them), which is what the attack data alone teach. The best of a
noisy curve leans high (with 20 probed facts one fact is 0.05); the verdict asks it of
every seed.

Verdict: holds when every method's best control-adjusted recovered fraction reaches
`min_recovered` in every seed; undecided while a seed is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.evaluate.metrics import mean
from ckl.evaluate.unlearning import recovered_fraction
from ckl.study._streams import forget_stage, unlearning_part
from ckl.study.base import FAILS, HOLDS, UNDECIDED, Study, register_study


@dataclass
class RelearningConfig:
    methods: list[str] = field(default_factory=lambda: ["ga", "npo", "graddiff"], metadata={"help": "unlearning parts (ga, npo, graddiff, ...), each run alone"})
    forget: int = field(default=40, metadata={"help": "base facts to forget, one per untouched person"})
    epochs: int = field(default=10, metadata={"help": "unlearning epochs (each method also stops once the facts are forgotten)"})
    lr: float = field(default=1e-3, metadata={"help": "unlearning learning rate"})
    attack_epochs: int = field(default=30, metadata={"help": "epochs of the relearning attack over its half of the forgotten facts"})
    attack_lr: float = field(default=1e-3, metadata={"help": "learning rate of the attack"})
    points: int = field(default=10, metadata={"help": "attack curve points per tenfold of steps"})
    min_recovered: float = field(default=0.25, metadata={"help": "recovered fraction every method must reach for the verdict"})

    def __post_init__(self) -> None:
        if not isinstance(self.methods, list) or not self.methods or not all(isinstance(m, str) and m for m in self.methods):
            raise ConfigError("methods", f"methods must be a non-empty list of unlearning methods, got {self.methods!r}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("methods", f"methods must not repeat, got {self.methods!r}")
        for name in self.methods:
            unlearning_part(name, "methods")
        check_count(self.forget, "forget", low=4)
        check_count(self.epochs, "epochs")
        check_number(self.lr, "lr", low=0, low_open=True)
        check_count(self.attack_epochs, "attack_epochs")
        check_number(self.attack_lr, "attack_lr", low=0, low_open=True)
        check_count(self.points, "points")
        check_number(self.min_recovered, "min_recovered", low=0, high=1)


class Relearning(Study):
    name = "relearning"
    paper = 'Rezaei et al. 2024, "RESTOR: Knowledge Recovery through Machine Unlearning" (and memory self-regeneration)'
    question = "Does brief fine-tuning on some forgotten facts bring back the others after unlearning?"
    Config = RelearningConfig

    def methods(self) -> list[dict[str, Any]]:
        c = self.config
        return [{"name": m, "train": {"epochs": c.epochs, "lr": c.lr}, m: {"mode": "batched"}} for m in c.methods]

    def experiment(self) -> dict[str, Any]:
        c = self.config
        return {"eval": {"kinds": ["statement"], "attack": {"data": "partial", "fraction": 0.5, "epochs": c.attack_epochs,
                                                             "lr": c.attack_lr, "batch_size": 4, "curve": c.points}}}

    def derive(self, stream):
        """One stage asking to forget `forget` base facts, one per untouched person."""
        return forget_stage(stream, self.config.forget, self.name)

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        labels = [m["name"] for m in self.methods()]
        numbers: dict[str, Any] = {}
        curves: dict[str, list[dict]] = {}
        T = int(store.get_meta("T"))
        for label in labels:
            runs = []
            for seed in seeds:
                attack = store.attacks(label, seed).get(T)
                if not attack or not attack["probe_ids"]:
                    continue
                start = {o["probe_id"]: o["em"] for o in store.outcomes(label, seed, 0)}
                original = mean(start[p] for p in attack["probe_ids"])
                unlearned = attack["accuracy_before"]
                points = attack.get("curve", [])
                floor = points[0].get("unseen") if points else None
                # the control: what the attack's data alone teach about facts never taught at all
                gain = lambda p: (p["unseen"] - floor) if floor is not None and p.get("unseen") is not None else 0.0
                curve = [{"step": p["step"], "accuracy": p["accuracy"], "control_gain": gain(p),
                          "recovered": recovered_fraction(original, unlearned, p["accuracy"] - gain(p))} for p in points]
                final = curve[-1]["recovered"] if curve else recovered_fraction(original, unlearned, attack["accuracy_after"])
                measured = [p for p in curve if p["recovered"] is not None]
                peak = max(measured, key=lambda p: p["recovered"]) if measured else {"step": attack["steps"], "recovered": final}
                runs.append({"seed": seed, "original": original, "unlearned": unlearned, "attacked": attack["accuracy_after"],
                             "recovered": final, "peak": peak["recovered"], "peak_step": peak["step"], "curve": curve})
            if not runs:
                return self.result(UNDECIDED, f"{label} has no relearning attack yet: the run did not finish", numbers, [], seeds)
            numbers[label] = {
                "original": mean(r["original"] for r in runs), "unlearned": mean(r["unlearned"] for r in runs),
                "attacked": mean(r["attacked"] for r in runs), "recovered": mean(r["recovered"] for r in runs),
                "peak": mean(r["peak"] for r in runs), "peak_steps": [r["peak_step"] for r in runs],
                "recovered_per_seed": [r["recovered"] for r in runs], "peak_per_seed": [r["peak"] for r in runs],
            }
            curves[label] = runs
        unmeasured = [label for label in labels if numbers[label]["peak"] is None]
        if unmeasured:
            return self.result(UNDECIDED, f"nothing was forgotten by {', '.join(unmeasured)}, so nothing can be recovered", numbers,
                               self._panels(curves), seeds)
        line = "; ".join(f"{label}: accuracy {numbers[label]['original']:.2f} -> {numbers[label]['unlearned']:.2f} unlearned; "
                         f"recovered {numbers[label]['peak']:.2f} at best (steps {', '.join(map(str, numbers[label]['peak_steps']))}), "
                         f"{numbers[label]['recovered']:.2f} after the attack's last step" for label in labels)
        unfinished = [s for s in seeds if any(s not in {r["seed"] for r in curves[label]} for label in labels)]
        if unfinished:
            return self.result(UNDECIDED, f"seeds {', '.join(map(str, unfinished))} did not finish; so far: {line}", numbers, self._panels(curves), seeds)
        holds = all(r["peak"] is not None and r["peak"] >= self.config.min_recovered for label in labels for r in curves[label])
        return self.result(HOLDS if holds else FAILS, line, numbers, self._panels(curves), seeds)

    def _panels(self, curves: dict[str, list[dict]]) -> list[dict]:
        series = []
        for label, runs in curves.items():
            run = runs[0]
            points = [p for p in run["curve"] if p["recovered"] is not None]
            series.append({"label": f"{label} (seed {run['seed']})", "x": [p["step"] for p in points], "y": [p["recovered"] for p in points]})
        return [{"title": "recovered fraction of facts the attack never showed", "xlabel": "attack steps", "ylabel": "recovered fraction",
                 "xlog": False, "series": series}]



register_study(Relearning)
