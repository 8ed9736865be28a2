"""forgetting-power-law: does forgetting grow as a power law in fine-tuning steps, and in
the number of trainable parameters, and does LoRA forget too?

Paper: Kalajdzievski 2024, "Scaling Laws for Forgetting When Fine-Tuning Large Language
Models". It fine-tunes Llama 2 with LoRA of several ranks (and fully), measures forgetting
as the rise of the cross-entropy loss on the pre-training distribution, and finds it grows
as a shifted power law in the number of parameters fine-tuned and in the update steps,
with LoRA not exempt.

Here: stage 1 of the stream (its new and updated facts) is fine-tuned fully (`naive`) and
with LoRA of each rank in `ranks`; an in-stage curve (`train.eval_every`, log-spaced)
scores the base knowledge K0 no stage touches (`invariant`). Forgetting at step t is the
rise of the mean negative log-likelihood of K0's answers on statement probes since step
0 (the sampled probes, `sample` per kind); its accuracy drop is reported beside it.

Deviations from the paper, stated:
- Forgetting is measured on the base facts' answers (K0 statement probes), not on
  pre-training text: ckl's question is what the model knew.
- The fits are separate, not the paper's joint law in parameters and steps: per method,
  y(t) = A * ((t + t0)^alpha - t0^alpha) (a power law in steps, shifted, 0 at step 0), and
  across methods the final forgetting y = A * P^beta against trainable parameters P.
- Only stage 1 is trained and fitted (it starts from the base model): the study's stream
  is the configured one cut to its first stage (`derive`).

Verdict: holds when, in every seed, every method's alpha > 0 with R^2 >= `min_r2`
(forgetting grows as a power of the steps), beta > 0 (more trainable parameters forget
more), and every LoRA's final forgetting is > 0; undecided while a seed is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.evaluate.metrics import mean as _mean
from ckl.results.numbers import mean_std
from ckl.study import fit as fits
from ckl.study.base import FAILS, HOLDS, UNDECIDED, Study, register_study


@dataclass
class ForgettingPowerLawConfig:
    ranks: list[int] = field(default_factory=lambda: [1, 4, 16, 64], metadata={"help": "LoRA ranks fine-tuned beside full fine-tuning"})
    epochs: int = field(default=40, metadata={"help": "epochs of stage 1 (examples/methods.yaml: 40)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of full fine-tuning"})
    lora_lr: float = field(default=3e-3, metadata={"help": "learning rate of the LoRA runs"})
    points: int = field(default=10, metadata={"help": "curve points per tenfold of steps (log spacing)"})
    sample: int = field(default=50, metadata={"help": "K0 probes per kind scored at each point"})
    min_r2: float = field(default=0.9, metadata={"help": "R^2 a step fit needs for the verdict"})

    def __post_init__(self) -> None:
        if not isinstance(self.ranks, list) or not self.ranks:
            raise ConfigError("ranks", f"ranks must be a non-empty list of LoRA ranks, got {self.ranks!r}")
        for r in self.ranks:
            check_count(r, "ranks")
        if len(set(self.ranks)) != len(self.ranks):
            raise ConfigError("ranks", f"ranks must not repeat, got {self.ranks!r}")
        check_count(self.epochs, "epochs")
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.lora_lr, "lora_lr", low=0, low_open=True)
        check_count(self.points, "points")
        check_count(self.sample, "sample")
        check_number(self.min_r2, "min_r2", low=0, high=1)


FULL = "full"


class ForgettingPowerLaw(Study):
    name = "forgetting-power-law"
    paper = 'Kalajdzievski 2024, "Scaling Laws for Forgetting When Fine-Tuning Large Language Models"'
    question = "Does forgetting of base knowledge grow as a power law in fine-tuning steps and in trainable parameters, LoRA included?"
    Config = ForgettingPowerLawConfig

    def _train(self, lr: float) -> dict[str, Any]:
        c = self.config
        return {"epochs": c.epochs, "lr": lr, "eval_every": c.points, "eval_spacing": "log",
                "eval_cohorts": ["invariant", "stage1"], "eval_sample": c.sample}

    def methods(self) -> list[dict[str, Any]]:
        c = self.config
        runs = [{"name": "naive", "label": FULL, "skip": ["forget"], "train": self._train(c.lr)}]
        runs += [{"name": "lora", "label": f"lora-r{r}", "skip": ["forget"], "train": self._train(c.lora_lr), "lora": {"r": r}}
                 for r in sorted(c.ranks)]
        return runs

    def derive(self, stream):
        """The configured stream cut to its first stage (the one fitted)."""
        from ckl.study._streams import with_stages

        return with_stages(stream, stream.stages[:1], self.name) if len(stream.stages) > 1 else None

    def check(self, stream) -> str | None:
        if not stream.stages or not (stream.stages[0].learn or stream.stages[0].update):
            return "stage 1 teaches nothing (no learn or update facts): there is no fine-tuning to measure forgetting under"
        if not any(p.cohort == "invariant" for p in stream.probes(kinds=("statement",))):
            return "the stream has no invariant base knowledge (K0 facts no stage touches) to forget"
        return None

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        labels = [m["label"] for m in self.methods()]
        params = {}
        per_seed: dict[str, list[dict]] = {label: [] for label in labels}
        for label in labels:
            for seed in seeds:
                rows = [r for r in store.curve(label, seed, "em", kinds=("statement",)) if r["stage"] == 1 and r["cohort"] == "invariant"]
                infos = store.stage_infos(label, seed)
                if not rows or len(infos) < 2:
                    continue
                params[label] = infos[1]["trainable_params"]
                steps = [r["step"] for r in rows]
                rise = [r["nll"] - rows[0]["nll"] for r in rows]
                drop = [rows[0]["accuracy"] - r["accuracy"] for r in rows]
                per_seed[label].append({"seed": seed, "steps": steps, "rise": rise, "drop": drop,
                                        "fit": fits.shifted_power_law(steps, rise)})
        missing = [label for label in labels if not per_seed[label]]
        if missing:
            return self.result(UNDECIDED, f"no stage-1 curve for {', '.join(missing)}: the run did not finish", {}, [], seeds)
        unfinished = [s for s in seeds if any(s not in {r["seed"] for r in per_seed[label]} for label in labels)]
        numbers: dict[str, Any] = {"methods": {}}
        for label in labels:
            runs = per_seed[label]
            good = [r["fit"] for r in runs if not r["fit"].failed]
            numbers["methods"][label] = {
                "trainable_params": params[label],
                "final_rise": _mean([r["rise"][-1] for r in runs]),
                "final_rise_std": _std([r["rise"][-1] for r in runs]),
                "final_drop": _mean([r["drop"][-1] for r in runs]),
                "alpha": _mean([f.params["alpha"] for f in good]) if good else None,
                "alpha_std": _std([f.params["alpha"] for f in good]) if good else None,
                "r2": _mean([f.r2 for f in good]) if good else None,
                "fits": [r["fit"].as_dict() for r in runs],
            }
        across = fits.power_law([params[label] for label in labels], [numbers["methods"][label]["final_rise"] for label in labels])
        numbers["params_fit"] = across.as_dict()
        by_seed = {}  # the same fit per seed: the verdict asks each seed, not only the mean
        for seed in seeds:
            rises = [next((r["rise"][-1] for r in per_seed[label] if r["seed"] == seed), None) for label in labels]
            if None not in rises:
                by_seed[seed] = fits.power_law([params[label] for label in labels], rises)
        numbers["params_fit_per_seed"] = {str(k): f.as_dict() for k, f in by_seed.items()}
        verdict, line = self._verdict(numbers, across, labels, per_seed, by_seed)
        if unfinished:
            verdict, line = UNDECIDED, f"seeds {', '.join(map(str, unfinished))} did not finish; so far: {line}"
        return self.result(verdict, line, numbers, self._panels(per_seed, numbers, across, labels, params), seeds)

    def _verdict(self, numbers: dict, across: fits.Fit, labels: list[str], per_seed: dict, by_seed: dict) -> tuple[str, str]:
        m = numbers["methods"]
        failed = [f"{label} seed {r['seed']} ({r['fit'].failed})" for label in labels for r in per_seed[label] if r["fit"].failed]
        if failed or across.failed:
            why = f"step fits failed: {'; '.join(failed)}" if failed else f"the fit across parameter counts failed ({across.failed})"
            return UNDECIDED, why
        # each claim must hold in every seed, not only in the mean
        steps_ok = all(r["fit"].params["alpha"] > 0 and r["fit"].r2 >= self.config.min_r2 for label in labels for r in per_seed[label])
        lora_forgets = all(r["rise"][-1] > 0 for label in labels if label != FULL for r in per_seed[label])
        sizes_ok = bool(by_seed) and all(not f.failed and f.params["beta"] > 0 for f in by_seed.values())
        beta = across.params["beta"]
        def seeds_of(label: str) -> str:  # per seed: a mean of exponents that hit the search bound would mislead
            return "/".join(f"{r['fit'].params['alpha']:.2f}{'*' if 'alpha' in r['fit'].at_bound else ''}" for r in per_seed[label])

        alphas = ", ".join(f"{label} {seeds_of(label)} (R^2 {m[label]['r2']:.2f})" for label in labels)
        rises = ", ".join(f"{label} {m[label]['final_rise']:+.3f}" for label in labels)
        line = (f"alpha over steps per seed (* = on the fit's bound): {alphas}; beta over trainable parameters {beta:.2f} (R^2 {across.r2:.2f}); "
                f"final rise of K0's answer loss (nats): {rises}")
        return (HOLDS if steps_ok and sizes_ok and lora_forgets else FAILS), line

    def _panels(self, per_seed, numbers, across, labels, params) -> list[dict]:
        loss, accuracy = [], []
        for label in labels:
            runs = per_seed[label]
            steps = runs[0]["steps"]
            if not all(r["steps"] == steps for r in runs):  # seeds stopped at other steps: plot the first
                runs = runs[:1]
            rise = [_mean(values) for values in zip(*(r["rise"] for r in runs))]
            loss.append({"label": label, "x": steps[1:], "y": rise[1:]})
            fitted = [fits.evaluate(r["fit"], steps[1:]) for r in runs if not r["fit"].failed]
            if fitted:
                loss.append({"label": f"{label} fit", "x": steps[1:], "y": [_mean(v) for v in zip(*fitted)], "fit": True})
            accuracy.append({"label": label, "x": steps, "y": [-_mean(v) for v in zip(*(r["drop"] for r in runs))]})
        sizes = [params[label] for label in labels]
        by_size = [{"label": "final rise", "x": sizes, "y": [numbers["methods"][label]["final_rise"] for label in labels], "points": True,
                    "names": labels}]
        fitted = fits.evaluate(across, sizes)
        if fitted:
            by_size.append({"label": f"fit, beta {across.params['beta']:.2f}", "x": sizes, "y": fitted, "fit": True})
        return [
            {"title": "K0 answer-loss rise, stage 1", "xlabel": "optimiser steps", "ylabel": "nats", "xlog": True, "ylog": True, "series": loss},
            {"title": "final rise against trainable parameters", "xlabel": "trainable parameters", "ylabel": "nats", "xlog": True, "ylog": True, "series": by_size},
            {"title": "K0 accuracy change over steps", "xlabel": "optimiser steps", "ylabel": "accuracy - accuracy at step 0", "xlog": False, "ylog": False, "series": accuracy},
        ]


def _std(values: Sequence[float]) -> float | None:
    return mean_std(values)[1]


register_study(ForgettingPowerLaw)
