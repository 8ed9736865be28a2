"""spurious-forgetting: is part of what a stage "forgets" still in the weights, so that a
short re-alignment on other, unrelated facts brings it back?

Paper: Zheng et al. 2025, "Spurious Forgetting in Continual Learning of Language Models"
(ICLR). After training on a new task, old-task accuracy falls; a few steps of training on
unrelated old-task data recover much of it, so the loss was one of task alignment, not of
knowledge. Freezing the bottom layers during the new task's training reduces it.

Here every stage of the stream is trained with full fine-tuning (`naive`) and with the
bottom `layers` blocks and the embeddings frozen (`freeze`). Then each method's final
model is re-aligned (`after_run`): a copy is fine-tuned for `align_epochs` on the
statements of `align_facts` base facts no stage touched, of one half of the untouched
people, while the other half's statement probes (at most `probes`), never shown, are
scored along the way (log-spaced, `points` per tenfold of steps). Recovered fraction at
step k = (accuracy at k - accuracy after the stages) / (accuracy before the stages -
accuracy after the stages), on those never-shown facts; read at its best step and at the
last (ckl.evaluate.unlearning.recovered_fraction, the same formula as the relearning
attack's).

Deviations: the paper re-aligns with a small set of old-task samples of one format on
large models; here the re-alignment data are facts of other people, in the same
templates, for the same tiny model that lost them.

Verdict: holds when, in every seed, full fine-tuning's best recovered fraction reaches
`min_recovered` (part of the forgetting is spurious) and freezing the bottom layers
retains more of the base knowledge than full fine-tuning; undecided while a seed is
missing. (The best point of a noisy curve leans high: 200 probes, one is 0.005.)
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckl.core.checks import check_count, check_number
from ckl.evaluate.metrics import mean
from ckl.evaluate.unlearning import recovered_fraction
from ckl.study._streams import untouched_people
from ckl.study.base import FAILS, HOLDS, MEASURED, UNDECIDED, Study, register_study


@dataclass
class SpuriousForgettingConfig:
    epochs: int = field(default=40, metadata={"help": "epochs per stage (examples/methods.yaml: 40)"})
    lr: float = field(default=1e-3, metadata={"help": "stage learning rate"})
    layers: int = field(default=2, metadata={"help": "bottom blocks frozen by the `freeze` run"})
    align_facts: int = field(default=60, metadata={"help": "base facts of untouched people the re-alignment trains on"})
    align_epochs: int = field(default=20, metadata={"help": "epochs of re-alignment over those facts"})
    align_lr: float = field(default=1e-3, metadata={"help": "re-alignment learning rate"})
    probes: int = field(default=200, metadata={"help": "never-shown statement probes scored during re-alignment"})
    points: int = field(default=10, metadata={"help": "re-alignment curve points per tenfold of steps"})
    min_recovered: float = field(default=0.25, metadata={"help": "best recovered fraction full fine-tuning must reach for the verdict"})

    def __post_init__(self) -> None:
        for name in ("epochs", "layers", "align_facts", "align_epochs", "probes", "points"):
            check_count(getattr(self, name), name)
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.align_lr, "align_lr", low=0, low_open=True)
        check_number(self.min_recovered, "min_recovered", low=0, high=1)


FULL, FROZEN = "naive", "freeze"


class SpuriousForgetting(Study):
    name = "spurious-forgetting"
    paper = 'Zheng et al. 2025, "Spurious Forgetting in Continual Learning of Language Models"'
    question = "Does a short re-alignment on unrelated facts bring back base knowledge a stage seemed to forget, and does freezing bottom layers forget less?"
    Config = SpuriousForgettingConfig

    def methods(self) -> list[dict[str, Any]]:
        c = self.config
        train = {"epochs": c.epochs, "lr": c.lr}
        return [{"name": FULL, "skip": ["forget"], "train": train},
                {"name": FROZEN, "skip": ["forget"], "train": train, "freeze": {"layers": c.layers}}]

    def _split(self, stream):
        """(facts the re-alignment trains on, the never-shown probes it scores)."""
        people = sorted(untouched_people(stream))
        random.Random("spurious-forgetting/split").shuffle(people)
        half, other = set(people[: len(people) // 2]), set(people[len(people) // 2 :])
        shown = [f for f in stream.base if f.subject in half][: self.config.align_facts]
        subject_of = {f.id: f.subject for f in stream.base}
        probes = [p for p in stream.probes(kinds=("statement",)) if p.cohort == "invariant" and subject_of.get(p.fact_id) in other]
        rng = random.Random("spurious-forgetting/probes")
        if len(probes) > self.config.probes:
            probes = sorted(rng.sample(probes, self.config.probes), key=lambda p: p.id)
        return shown, probes

    def check(self, stream) -> str | None:
        if not any(ch.learn or ch.update for ch in stream.stages):
            return "no stage teaches anything, so no stage can make the model forget"
        people = untouched_people(stream)
        if len(people) < 4:
            return f"re-alignment needs base facts of at least 4 untouched people (two halves); the stream has {len(people)}"
        return None

    def after_run(self, experiment, out: Path, store, say) -> None:
        from ckl.data.stream import Stream, render_documents
        from ckl.methods.base import build_method
        from ckl.model.scoring import ProbeScorer
        from ckl.run import checkpoint
        from ckl.run.experiment import make_accelerator
        from ckl.train.loop import TrainConfig, rng_for, train

        stream = Stream.load(experiment.stream) if experiment.stream else Stream.load(Path(out) / "world")
        shown, probes = self._split(stream)
        measured = store.get_meta(MEASURED) or {}
        c, T = self.config, stream.T
        accelerator = make_accelerator()
        for spec in experiment.methods:
            for seed in experiment.seeds:
                key = f"{spec.display}/{seed}"
                if key in measured or T not in store.completed_rows(spec.display, seed):
                    continue
                method = build_method(spec.name, spec.options, where=spec.display)
                model, tokenizer, _ = checkpoint.load_verified(checkpoint.checkpoint_dir(Path(out), spec.display, seed), method, spec.display, T)
                scorer = ProbeScorer(tokenizer, probes)
                aligned = copy.deepcopy(model)
                curve: list[dict] = []

                def point(step, epoch, loss, aligned=aligned, scorer=scorer, curve=curve):
                    curve.append({"step": step, "accuracy": float(scorer(aligned).em.mean())})

                def documents(epoch: int) -> list[str]:
                    return render_documents(shown, stream.relations, rng_for(seed, "realign-docs", epoch), questions=0)

                config = TrainConfig(epochs=c.align_epochs, lr=c.align_lr, batch_size=4, eval_every=c.points, eval_spacing="log")
                train(aligned, tokenizer, documents, config, accelerator, seed=rng_for(seed, "realign").randrange(2**31), on_eval=point)
                start = {o["probe_id"]: o["em"] for o in store.outcomes(spec.display, seed, 0)}
                measured[key] = {"before": mean(start[p.id] for p in probes), "curve": curve, "shown": len(shown), "probes": len(probes)}
                store.set_meta(MEASURED, measured)
                say(f"{spec.display} seed {seed}: re-aligned on {len(shown)} other facts; never-shown probes "
                    f"{curve[0]['accuracy']:.3f} -> {curve[-1]['accuracy']:.3f} (before the stages {measured[key]['before']:.3f})")

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        from ckl.results.summary import summarize

        measured = store.get_meta(MEASURED) or {}
        summary = summarize(store)
        numbers: dict[str, Any] = {}
        curves: dict[str, dict] = {}
        for label in (FULL, FROZEN):
            runs = []
            for seed in seeds:
                m = measured.get(f"{label}/{seed}")
                if not m:
                    continue
                before, after = m["before"], m["curve"][0]["accuracy"]
                rec = [{"step": p["step"], "recovered": recovered_fraction(before, after, p["accuracy"])} for p in m["curve"]]
                good = [p for p in rec if p["recovered"] is not None]
                best = max(good, key=lambda p: p["recovered"]) if good else None
                runs.append({"seed": seed, "before": before, "after": after, "final": rec[-1]["recovered"],
                             "peak": best and best["recovered"], "peak_step": best and best["step"], "curve": rec})
            if not runs:
                return self.result(UNDECIDED, f"{label} has no re-alignment yet: the run did not finish", numbers, [], seeds)
            numbers[label] = {
                "retention": summary.get(label, {}).get("retention"), "retention_std": summary.get(label, {}).get("retention_std"),
                "extraction_retention": summary.get(label, {}).get("extraction_retention"),
                "probes_before": mean(r["before"] for r in runs), "probes_after": mean(r["after"] for r in runs),
                "recovered_peak": mean(r["peak"] for r in runs), "recovered_final": mean(r["final"] for r in runs),
                "peak_steps": [r["peak_step"] for r in runs],
            }
            curves[label] = runs[0]
            numbers[label]["runs"] = {r["seed"]: r["peak"] for r in runs}
        full, frozen = numbers[FULL], numbers[FROZEN]
        if full["recovered_peak"] is None or full["retention"] is None or frozen["retention"] is None:
            return self.result(UNDECIDED, "full fine-tuning forgot nothing on the probed facts, so there is nothing to recover",
                               numbers, self._panels(curves), seeds)
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        line = (f"full fine-tuning: never-shown base facts {full['probes_before']:.2f} -> {full['probes_after']:.2f} after the stages, "
                f"re-alignment on other facts recovers {full['recovered_peak']:.2f} of the drop at best ({fmt(full['recovered_final'])} at its end); "
                f"freeze({self.config.layers}): recovers {fmt(frozen['recovered_peak'])}; retention freeze {frozen['retention']:.3f} vs full {full['retention']:.3f}")
        # each claim is asked of every seed, not only of the means
        retained = {label: {s["seed"]: s.get("retention") for s in summary.get(label, {}).get("per_seed", []) if s.get("complete")} for label in (FULL, FROZEN)}
        unfinished = [s for s in seeds if s not in full["runs"] or s not in frozen["runs"] or None in (retained[FULL].get(s), retained[FROZEN].get(s))]
        if unfinished:
            return self.result(UNDECIDED, f"seeds {', '.join(map(str, unfinished))} did not finish; so far: {line}", numbers, self._panels(curves), seeds)
        holds = all(full["runs"][s] is not None and full["runs"][s] >= self.config.min_recovered and retained[FROZEN][s] > retained[FULL][s] for s in seeds)
        return self.result(HOLDS if holds else FAILS, line, numbers, self._panels(curves), seeds)

    def _panels(self, curves: dict[str, dict]) -> list[dict]:
        series = [{"label": f"{label} (seed {run['seed']})", "x": [p["step"] for p in run["curve"] if p["recovered"] is not None],
                   "y": [p["recovered"] for p in run["curve"] if p["recovered"] is not None]} for label, run in curves.items()]
        return [{"title": "re-alignment on other facts: recovered fraction of never-shown base facts", "xlabel": "re-alignment steps",
                 "ylabel": "recovered fraction", "series": series}]


register_study(SpuriousForgetting)
