"""acquisition-dynamics: how is a fact learned and forgotten during continued training,
once, duplicated or paraphrased?

Paper: Chang et al. 2024, "How Do Large Language Models Acquire Factual Knowledge During
Pretraining?" (NeurIPS). Injecting new facts into OLMo's pretraining data once, several
times verbatim (duplicated) or several times in paraphrases, and following each fact's
log-probability: every exposure raises it, it decays after the last one as a power law of
the steps, and paraphrased exposure generalises better than duplicated exposure.

Here the base model's own pretraining corpus goes on (`after_run`; no method runs): each
epoch its base-knowledge biographies, question lines of the QA half, general text and
background documents, as in `ckl pretrain`, for `epochs` epochs at `lr`. Into it the
facts of the first `people` people the stream's first stage teaches are injected, in one
of three modes: `once` (one rendering, at the first epoch), `duplicated` (that same text at
`times` epochs, `gap` apart) and `paraphrased` (a new rendering, other templates and fact
order, at each of those epochs). Each mode trains its own copy of the base model on the
same corpus (the same documents each epoch; from the second exposure on the injected
documents differ, and with them the packing and batch order). The injected facts' probes are scored at log-spaced steps
(`points` per tenfold) and at the end of every exposure epoch: statement, paraphrase
(held-out templates) and extraction (question about a person whose question lines are
never trained) probes.

Measured per mode: the mean log-probability of the injected answers over the steps; the
gain at the last exposure and at the end, per probe kind; and the retention after the last
exposure, (logprob(t) - logprob(0)) / (logprob(last exposure) - logprob(0)), fitted as a
power law in the steps since that exposure (ckl.study.fit.power_law; the paper fits the
decay of the log-probability gain likewise).

Deviations: a tiny model trained from scratch on a synthetic corpus, not OLMo mid-way
through pretraining; the paper's paraphrases are written by an LLM, ckl's are the
relations' other training templates.

Verdict: holds when, in every seed, paraphrased exposure ends with a higher log-probability
gain than duplicated exposure on the held-out forms (paraphrase and extraction probes
together) and the decay after the last exposure fits a falling power law (exponent < 0,
R^2 >= `min_r2`) for the duplicated and paraphrased modes; undecided while a seed is
missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckl.core.checks import check_count, check_number
from ckl.evaluate.metrics import mean
from ckl.study import fit as fits
from ckl.study.base import FAILS, HOLDS, MEASURED, UNDECIDED, Study, register_study

MODES = ("once", "duplicated", "paraphrased")
HELD_OUT = ("paraphrase", "extraction")


@dataclass
class AcquisitionDynamicsConfig:
    people: int = field(default=10, metadata={"help": "people of stage 1 whose facts are injected"})
    times: int = field(default=5, metadata={"help": "exposures of the duplicated and paraphrased modes"})
    gap: int = field(default=2, metadata={"help": "epochs between exposures"})
    epochs: int = field(default=30, metadata={"help": "epochs of continued training in all"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate of the continued training"})
    points: int = field(default=10, metadata={"help": "curve points per tenfold of steps"})
    min_r2: float = field(default=0.8, metadata={"help": "R^2 the decay fit needs for the verdict"})

    def __post_init__(self) -> None:
        for name in ("people", "times", "gap", "epochs", "points"):
            check_count(getattr(self, name), name)
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.min_r2, "min_r2", low=0, high=1)
        if (self.times - 1) * self.gap >= self.epochs:
            from ckl.core.checks import ConfigError

            raise ConfigError("epochs", f"epochs must exceed the last exposure's epoch ({(self.times - 1) * self.gap}) to see the decay after it, got {self.epochs}")


class AcquisitionDynamics(Study):
    name = "acquisition-dynamics"
    runs_methods = False
    paper = 'Chang et al. 2024, "How Do Large Language Models Acquire Factual Knowledge During Pretraining?"'
    question = "Does a fact's log-probability decay as a power law after its last exposure, and does paraphrased exposure generalise better than duplicated?"
    Config = AcquisitionDynamicsConfig

    def methods(self) -> list[dict[str, Any]]:
        """The continued training, for the record (the study trains it itself, per mode)."""
        return [{"name": "naive", "label": "continued-pretraining", "skip": ["forget", "update"], "train": {"epochs": self.config.epochs, "lr": self.config.lr}}]

    def exposures(self, mode: str) -> list[int]:
        """The epochs at which `mode` shows the injected facts."""
        return [0] if mode == "once" else [k * self.config.gap for k in range(self.config.times)]

    def _injected(self, stream):
        people: list[str] = []
        for f in stream.stages[0].learn if stream.stages else ():
            if f.subject not in people:
                people.append(f.subject)
        chosen = set(people[: self.config.people])
        return [f for f in stream.stages[0].learn if f.subject in chosen] if stream.stages else []

    def check(self, stream) -> str | None:
        injected = {f.subject for f in self._injected(stream)}
        if len(injected) < self.config.people:
            return f"injecting the facts of {self.config.people} new people needs them in stage 1's learn facts; the stream's stage 1 teaches {len(injected)}"
        return None

    def after_run(self, experiment, out: Path, store, say) -> None:
        import torch

        from ckl.data.stream import Stream, make_probes, render_documents
        from ckl.model import lm
        from ckl.model.scoring import ProbeScorer
        from ckl.run.experiment import make_accelerator
        from ckl.train.loop import TrainConfig, rng_for, train

        stream = Stream.load(experiment.stream) if experiment.stream else Stream.load(Path(out) / "world")
        model_dir = Path(experiment.model) if experiment.model else Path(out) / "base_model"
        injected = self._injected(stream)
        probes = make_probes(injected, stream.relations, "injected", 1, "learn", ("statement",) + HELD_OUT, 10, qa_subjects=stream.qa_subjects)
        general = list(stream.general_train) + list(stream.background)
        measured = store.get_meta(MEASURED) or {}
        c = self.config
        accelerator = make_accelerator()
        for seed in experiment.seeds:
            first = render_documents(injected, stream.relations, rng_for(seed, "inject", 0), questions=0)
            for mode in MODES:
                key = f"{mode}/{seed}"
                if key in measured:
                    continue
                at = set(self.exposures(mode))
                model, tokenizer = lm.load(model_dir, allow_pickle=experiment.allow_pickle, trust_remote_code=experiment.trust_remote_code)
                model = model.to(accelerator.device)
                scorer = ProbeScorer(tokenizer, probes)
                curve: list[dict] = []
                epoch_start: dict[int, int] = {}

                def documents(epoch: int, mode=mode, at=at) -> list[str]:
                    rng = rng_for(seed, "corpus", epoch)  # the same corpus for every mode
                    docs = render_documents(stream.base, stream.relations, rng, qa_subjects=stream.qa_subjects) + general
                    if epoch in at:
                        k = sorted(at).index(epoch)
                        docs += first if mode != "paraphrased" or k == 0 else render_documents(injected, stream.relations, rng_for(seed, "inject", k), questions=0)
                    return docs

                steps = [0]  # optimiser steps so far (the loop's progress callback)

                def point(step, epoch, loss, model=model, curve=curve, scorer=scorer):
                    if curve and curve[-1]["step"] == step:
                        return  # an exposure's end that is also a log-spaced point
                    scores = scorer(model)
                    by_kind = {}
                    for kind in ("statement",) + HELD_OUT:
                        rows = [i for i, p in enumerate(probes) if p.kind == kind]
                        if rows:
                            by_kind[kind] = {"logprob": float(scores.logprob[rows].mean()), "em": float(scores.em[rows].mean())}
                    curve.append({"step": step, "epoch": epoch, **by_kind})

                def progress(epoch, step, loss, epoch_start=epoch_start, steps=steps):
                    epoch_start.setdefault(epoch, step - 1)
                    steps[0] = step

                def exposure_end(epoch, at=at, model=model, steps=steps, curve=curve) -> bool:
                    """A point at the end of every exposure epoch: the peak the decay starts from."""
                    if epoch in at:
                        point(steps[0], epoch, float("nan"))
                        model.train()
                    return False

                config = TrainConfig(epochs=c.epochs, lr=c.lr, eval_every=c.points, eval_spacing="log")
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    train(model, tokenizer, documents, config, accelerator, seed=rng_for(seed, "continued").randrange(2**31),
                          on_eval=point, progress=progress, on_epoch_end=exposure_end)
                curve.sort(key=lambda p: p["step"])
                last = max(at)
                ends = [epoch_start.get(e + 1, steps[0]) for e in sorted(at)]  # steps done when each exposure epoch ended
                measured[key] = {"curve": curve, "last_exposure_step": ends[-1] if last + 1 < c.epochs else None,
                                 "exposure_steps": [epoch_start.get(e, 0) for e in sorted(at)], "exposure_end_steps": ends}
                store.set_meta(MEASURED, measured)
                say(f"{mode} seed {seed}: injected facts' statement log-prob {curve[0]['statement']['logprob']:.2f} -> "
                    f"{curve[-1]['statement']['logprob']:.2f} over {curve[-1]['step']} steps")

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        measured = store.get_meta(MEASURED) or {}
        numbers: dict[str, Any] = {}
        for mode in MODES:
            runs = [measured[f"{mode}/{s}"] for s in seeds if f"{mode}/{s}" in measured]
            if not runs:
                return self.result(UNDECIDED, f"the {mode} run did not finish", numbers, [], seeds)
            entry: dict[str, Any] = {}
            for kind in ("statement",) + HELD_OUT:
                if kind not in runs[0]["curve"][0]:
                    continue
                entry[f"{kind}_gain_end"] = mean(r["curve"][-1][kind]["logprob"] - r["curve"][0][kind]["logprob"] for r in runs)
                entry[f"{kind}_gain_last_exposure"] = mean(_at(r, r["last_exposure_step"], kind) for r in runs)
                entry[f"{kind}_em_end"] = mean(r["curve"][-1][kind]["em"] for r in runs)
            decay = [_decay(r) for r in runs]
            fitted = [fits.power_law(*d) for d in decay if d is not None]
            good = [f for f in fitted if not f.failed]
            entry["decay_exponent"] = mean(f.params["beta"] for f in good) if good else None
            entry["decay_r2"] = mean(f.r2 for f in good) if good else None
            entry["decay_fits"] = [f.as_dict() for f in fitted]
            entry["held_out_gain_end"] = mean(entry.get(f"{k}_gain_end") for k in HELD_OUT)
            numbers[mode] = entry
        dup, par = numbers["duplicated"], numbers["paraphrased"]
        if dup["held_out_gain_end"] is None or par["held_out_gain_end"] is None:
            return self.result(UNDECIDED, "the stream has no paraphrase or extraction probes of the injected facts", numbers, self._panels(measured, seeds), seeds)
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        decays = all(numbers[m]["decay_exponent"] is not None and numbers[m]["decay_exponent"] < 0 and numbers[m]["decay_r2"] >= self.config.min_r2
                     for m in ("duplicated", "paraphrased"))
        line = (f"held-out forms' log-prob gain at the end: paraphrased {par['held_out_gain_end']:.2f} vs duplicated {dup['held_out_gain_end']:.2f} "
                f"(once {fmt(numbers['once']['held_out_gain_end'])}); decay after the last exposure: exponent duplicated "
                f"{fmt(dup['decay_exponent'])} (R^2 {fmt(dup['decay_r2'])}), paraphrased {fmt(par['decay_exponent'])} (R^2 {fmt(par['decay_r2'])})")
        # each claim is asked of every seed, not only of the means
        unfinished = [s for s in seeds if any(f"{m}/{s}" not in measured for m in MODES)]
        if unfinished:
            return self.result(UNDECIDED, f"seeds {', '.join(map(str, unfinished))} did not finish; so far: {line}", numbers, self._panels(measured, seeds), seeds)

        def held_out(run: dict) -> float | None:
            return mean(run["curve"][-1][k]["logprob"] - run["curve"][0][k]["logprob"] for k in HELD_OUT if k in run["curve"][0])

        def falls(run: dict) -> bool:
            d = _decay(run)
            f = fits.power_law(*d) if d is not None else None
            return f is not None and not f.failed and f.params["beta"] < 0 and f.r2 >= self.config.min_r2

        per_seed = []
        for seed in seeds:
            d, p = measured[f"duplicated/{seed}"], measured[f"paraphrased/{seed}"]
            per_seed.append({"seed": seed, "paraphrased_generalises": (held_out(p) or 0) > (held_out(d) or 0), "decays": falls(d) and falls(p)})
        numbers["per_seed"] = per_seed
        holds = all(x["paraphrased_generalises"] and x["decays"] for x in per_seed) and decays
        return self.result(HOLDS if holds else FAILS, line, numbers, self._panels(measured, seeds), seeds)

    def _panels(self, measured: dict, seeds: Sequence[int]) -> list[dict]:
        seed = next((s for s in seeds if all(f"{m}/{s}" in measured for m in MODES)), None)
        if seed is None:
            return []
        panels = []
        for kind, title in (("statement", "injected facts, training forms"), ("paraphrase", "held-out paraphrases"), ("extraction", "extraction questions")):
            series = [{"label": mode, "x": [p["step"] for p in measured[f"{mode}/{seed}"]["curve"] if kind in p],
                       "y": [p[kind]["logprob"] for p in measured[f"{mode}/{seed}"]["curve"] if kind in p]} for mode in MODES]
            if any(s["x"] for s in series):
                panels.append({"title": f"{title} (seed {seed})", "xlabel": "optimiser steps", "ylabel": "mean log-probability of the answer", "series": series})
        return panels


def _at(run: dict, step: int | None, kind: str) -> float | None:
    """The log-probability gain of `kind` at `step` (a scored step), None if not scored."""
    points = [p for p in run["curve"] if p["step"] == step and kind in p]
    return points[0][kind]["logprob"] - run["curve"][0][kind]["logprob"] if points else None


def _decay(run: dict) -> tuple[list[float], list[float]] | None:
    """(steps since the last exposure, retained share of the statement log-prob gain) after
    the last exposure, where the retained share is > 0; None without points after it."""
    curve, start = run["curve"], run["last_exposure_step"]
    if start is None:
        return None
    base = curve[0]["statement"]["logprob"]
    at = [p for p in curve if p["step"] == start]  # scored at the end of the last exposure epoch
    if not at:
        return None
    peak = at[-1]["statement"]["logprob"] - base
    if peak <= 0:
        return None
    after = [(p["step"] - start, (p["statement"]["logprob"] - base) / peak) for p in curve if p["step"] > start]
    after = [(t, r) for t, r in after if r > 0]
    return ([t for t, _ in after], [r for _, r in after]) if after else None


register_study(AcquisitionDynamics)
