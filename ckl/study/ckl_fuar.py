"""ckl-fuar: which continual-knowledge-learning baseline trades the least old knowledge for
the new?

Paper: Jang et al. 2022, "Towards Continual Knowledge Learning of Language Models" (ICLR).
On the invariant / updated / new split of CKL it compares vanilla continued training,
RecAdam (a regulariser), Mix-Review (rehearsal of the pre-training corpus), LoRA and
K-Adapter (parameter expansion), with FUAR = forgotten invariant knowledge per unit of
updated and new knowledge gained (lower is better). Its findings: the parameter-expansion
methods reach the lowest FUAR, and Mix-Review retains more invariant knowledge than
vanilla training.

Here the five run on the stream's stages with examples/methods.yaml's settings (full
fine-tuning at `lr`, LoRA and K-Adapter at `adapter_lr`, `epochs` per stage). Mix-Review is
ckl's `replay` with general pre-training sentences mixed in (`text_fraction`) beside
replayed base facts: the pre-training corpus of a ckl base model is its K0 biographies and
general text. FUAR, retention, acquisition and update are ckl's (docs/metrics.md),
statement probes; extraction retention is reported beside them.

Deviations: T5 and GPT-2 on news text in the paper, ckl's stream and base model here; the
paper's Mix-Review decays its mixing ratio, `replay` keeps it fixed.

Verdict: holds when, in every seed, the lower FUAR of LoRA and K-Adapter is below every
other baseline's and Mix-Review's retention is above vanilla's; undecided while a seed is
missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckl.core.checks import check_count, check_number
from ckl.study.base import FAILS, HOLDS, UNDECIDED, Study, register_study


@dataclass
class CklFuarConfig:
    epochs: int = field(default=40, metadata={"help": "epochs per stage (examples/methods.yaml: 40)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of vanilla, RecAdam and Mix-Review"})
    adapter_lr: float = field(default=3e-3, metadata={"help": "learning rate of LoRA and K-Adapter"})
    text_fraction: float = field(default=0.2, metadata={"help": "Mix-Review: share of general pre-training sentences"})
    replay_fraction: float = field(default=0.5, metadata={"help": "Mix-Review: share of replayed base facts"})

    def __post_init__(self) -> None:
        check_count(self.epochs, "epochs")
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.adapter_lr, "adapter_lr", low=0, low_open=True)
        check_number(self.text_fraction, "text_fraction", low=0, high=0.99)
        check_number(self.replay_fraction, "replay_fraction", low=0, high=0.99)


EXPANSION = ("lora", "kadapter")
OTHERS = ("vanilla", "recadam", "mix-review")


class CklFuar(Study):
    name = "ckl-fuar"
    paper = 'Jang et al. 2022, "Towards Continual Knowledge Learning of Language Models"'
    question = "Does parameter expansion give the lowest FUAR, and does Mix-Review retain more than vanilla training?"
    Config = CklFuarConfig

    def methods(self) -> list[dict[str, Any]]:
        c = self.config
        full, adapter = {"epochs": c.epochs, "lr": c.lr}, {"epochs": c.epochs, "lr": c.adapter_lr}
        return [
            {"name": "naive", "label": "vanilla", "skip": ["forget"], "train": full},
            {"name": "recadam", "label": "recadam", "skip": ["forget"], "train": full},
            {"name": "replay", "label": "mix-review", "skip": ["forget"], "train": full,
             "replay": {"fraction": c.replay_fraction, "text_fraction": c.text_fraction}},
            {"name": "lora", "label": "lora", "skip": ["forget"], "train": adapter},
            {"name": "kadapter", "label": "kadapter", "skip": ["forget"], "train": adapter},
        ]

    def check(self, stream) -> str | None:
        if not any(ch.learn or ch.update for ch in stream.stages):
            return "no stage teaches new or updated facts: FUAR has nothing gained to divide by"
        if not stream.general_train:
            return "the stream has no general training text for Mix-Review to mix in"
        return None

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        from ckl.results.summary import summarize

        summary = summarize(store)
        labels = [m["label"] for m in self.methods()]
        keys = ("fuar", "retention", "acquisition", "update", "extraction_retention", "paraphrase_retention")
        numbers = {label: {k: summary.get(label, {}).get(k) for k in keys} | {f"{k}_std": summary.get(label, {}).get(f"{k}_std") for k in keys}
                   for label in labels}
        fuar = {label: numbers[label]["fuar"] for label in labels}
        missing = [label for label in labels if fuar[label] is None]
        if missing:
            return self.result(UNDECIDED, f"no FUAR for {', '.join(missing)} (not finished, or nothing gained)", numbers,
                               self._panels(numbers, labels), seeds)
        # each claim is asked of every seed (the same seed of every method), not only of the means
        runs = {label: {s["seed"]: s for s in summary.get(label, {}).get("per_seed", []) if s.get("complete")} for label in labels}
        done = [seed for seed in seeds if all(seed in runs[label] for label in labels)]
        per_seed = []
        for seed in done:
            f = {label: runs[label][seed].get("fuar") for label in labels}
            r = {label: runs[label][seed].get("retention") for label in labels}
            lowest = None not in f.values() and all(min(f[e] for e in EXPANSION) < f[o] for o in OTHERS)
            retains = None not in (r["mix-review"], r["vanilla"]) and r["mix-review"] > r["vanilla"]
            per_seed.append({"seed": seed, "expansion_lowest": lowest, "mix_review_retains": retains})
        numbers["per_seed"] = per_seed
        lowest_in = sum(p["expansion_lowest"] for p in per_seed)
        retains_in = sum(p["mix_review_retains"] for p in per_seed)
        order = " < ".join(f"{label} {fuar[label]:.3f}" for label in sorted(labels, key=fuar.get))
        line = (f"FUAR {order} (means); parameter expansion lowest in {lowest_in} of {len(done)} seeds; "
                f"Mix-Review retains more than vanilla in {retains_in} of {len(done)} seeds "
                f"({numbers['mix-review']['retention']:.3f} vs {numbers['vanilla']['retention']:.3f})")
        if len(done) < len(seeds):
            return self.result(UNDECIDED, f"seeds {', '.join(str(s) for s in seeds if s not in done)} did not finish; so far: {line}",
                               numbers, self._panels(numbers, labels), seeds)
        holds = lowest_in == len(done) and retains_in == len(done)
        return self.result(HOLDS if holds else FAILS, line, numbers, self._panels(numbers, labels), seeds)

    def _panels(self, numbers: dict, labels: list[str]) -> list[dict]:
        def scatter(key_x: str, key_y: str) -> dict:
            kept = [label for label in labels if numbers[label][key_x] is not None and numbers[label][key_y] is not None]
            return {"label": "methods", "x": [numbers[label][key_x] for label in kept], "y": [numbers[label][key_y] for label in kept],
                    "points": True, "names": kept}

        return [
            {"title": "FUAR (lower is better) against retention", "xlabel": "retention (statements)", "ylabel": "FUAR",
             "series": [scatter("retention", "fuar")]},
            {"title": "retention against acquisition", "xlabel": "retention (statements)", "ylabel": "acquisition",
             "series": [scatter("retention", "acquisition")]},
            {"title": "retention: statements against extraction", "xlabel": "retention (statements)", "ylabel": "retention (extraction)",
             "series": [scatter("retention", "extraction_retention")]},
        ]


register_study(CklFuar)
