"""unlearning-sequential-vs-batch: is it better to unlearn many targets at once or in
chunks, one chunk after another?

Paper: Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language
Models" (ACL). Gradient ascent on the target sequences, measured by extraction likelihood
(EL) and memorization accuracy (MA) of the targets and by the model's remaining ability;
unlearning the same targets in sequential chunks kept the language model's ability better
than unlearning all of them at once.

Here the study builds its own stream from the configured one (`derive`): one stage that
asks to forget `forget` base facts, one per untouched person. The unlearning method
(`method`, gradient ascent by default) runs once on all of them together (`mode:
batched`) and once in chunks of `chunk_size` (`mode: sequential`), each with the same
epochs and stopping rule (a chunk is done once its facts are forgotten). Measured for
both (docs/unlearning.md): forget efficacy, EL and MA of the targets before and after
(`eval.unlearning`), retention of the untouched knowledge and of the forgotten people's
other facts (the boundary), held-out perplexity, MA of the kept facts.

Deviation: EL/MA are computed on the facts' short answers (n-gram size 1), not on
200-token training sequences.

Verdict: holds when, in every seed, the chunked run keeps more of the untouched knowledge
(retention) than the batched one while forgetting as well (efficacy within `tolerance`
of it or better); undecided while a seed is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.study._streams import forget_stage, unlearning_part
from ckl.study.base import FAILS, HOLDS, UNDECIDED, Study, register_study


@dataclass
class SequentialVsBatchConfig:
    method: str = field(default="ga", metadata={"help": "the unlearning part (ga, npo, graddiff, ...)"})
    forget: int = field(default=32, metadata={"help": "base facts to forget, one per untouched person"})
    chunk_size: int = field(default=8, metadata={"help": "facts per chunk in the sequential run"})
    epochs: int = field(default=10, metadata={"help": "unlearning epochs (per chunk in the sequential run)"})
    lr: float = field(default=1e-3, metadata={"help": "unlearning learning rate"})
    tolerance: float = field(default=0.1, metadata={"help": "efficacy the chunked run may lose against the batched one for the verdict"})

    def __post_init__(self) -> None:
        unlearning_part(self.method, "method")
        check_count(self.forget, "forget", low=2)
        check_count(self.chunk_size, "chunk_size")
        if self.chunk_size >= self.forget:
            raise ConfigError("chunk_size", f"chunk_size must be below forget ({self.forget}) to make more than one chunk, got {self.chunk_size}")
        check_count(self.epochs, "epochs")
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.tolerance, "tolerance", low=0, high=1)


BATCHED, CHUNKED = "batched", "chunked"


class SequentialVsBatch(Study):
    name = "unlearning-sequential-vs-batch"
    paper = 'Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models"'
    question = "Does unlearning the same targets in chunks keep more of the rest of the model than unlearning them all at once?"
    Config = SequentialVsBatchConfig

    def methods(self) -> list[dict[str, Any]]:
        c = self.config
        train = {"epochs": c.epochs, "lr": c.lr}
        return [
            {"name": c.method, "label": BATCHED, "train": train, c.method: {"mode": "batched"}},
            {"name": c.method, "label": CHUNKED, "train": train, c.method: {"mode": "sequential", "chunk_size": c.chunk_size}},
        ]

    def experiment(self) -> dict[str, Any]:
        return {"eval": {"kinds": ["statement"], "unlearning": {"ngram": 1, "max_facts": 4 * self.config.forget}}}

    def derive(self, stream):
        """One stage asking to forget `forget` base facts, one per untouched person."""
        return forget_stage(stream, self.config.forget, self.name)

    def analyse(self, store, seeds: Sequence[int]) -> dict[str, Any]:
        from ckl.results.unlearning import summarize_unlearning

        summary = summarize_unlearning(store, methods=[BATCHED, CHUNKED])
        keys = ("efficacy", "forget_before", "forget_after", "el_before", "el_after", "ma_before", "ma_after", "retention",
                "boundary_retention", "kept_ma_after", "seconds")
        numbers = {label: {k: summary.get(label, {}).get(k) for k in keys} for label in (BATCHED, CHUNKED)}
        for label in (BATCHED, CHUNKED):
            ppl = [i["perplexity"] for s in seeds for i in store.stage_infos(label, s)[-1:] if i["perplexity"] is not None]
            numbers[label]["perplexity_after"] = sum(ppl) / len(ppl) if ppl else None
            numbers[label]["seeds"] = summary.get(label, {}).get("seeds", 0)
        b, c = numbers[BATCHED], numbers[CHUNKED]
        if not b["seeds"] or not c["seeds"] or None in (b["efficacy"], c["efficacy"], b["retention"], c["retention"]):
            return self.result(UNDECIDED, "a run did not finish or forgot nothing measurable", numbers, [], seeds)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"
        line = (f"retention of untouched knowledge: chunks of {self.config.chunk_size} {c['retention']:.3f} vs all at once {b['retention']:.3f}; "
                f"efficacy {c['efficacy']:.3f} vs {b['efficacy']:.3f}; MA after {fmt(c['ma_after'])} vs {fmt(b['ma_after'])}; "
                f"held-out perplexity {fmt(c['perplexity_after'])} vs {fmt(b['perplexity_after'])}")
        from ckl.results.unlearning import unlearning_seed

        metric = store.get_meta("metric", "em")
        per_seed, missing = [], []
        for seed in seeds:  # the claim is asked of every seed, not only of the means
            sb, sc = unlearning_seed(store, BATCHED, seed, metric), unlearning_seed(store, CHUNKED, seed, metric)
            if not (sb["complete"] and sc["complete"]) or None in (sb.get("retention"), sc.get("retention"), sb.get("efficacy"), sc.get("efficacy")):
                missing.append(seed)
                continue
            per_seed.append({"seed": seed, "holds": sc["retention"] > sb["retention"] and sc["efficacy"] >= sb["efficacy"] - self.config.tolerance})
        numbers["per_seed"] = per_seed
        line += f"; chunks keep more at the efficacy allowed in {sum(p['holds'] for p in per_seed)} of {len(per_seed)} seeds"
        if missing:
            return self.result(UNDECIDED, f"seeds {', '.join(map(str, missing))} did not finish or forgot nothing measurable; so far: {line}", numbers, [], seeds)
        holds = all(p["holds"] for p in per_seed)
        panels = [{"title": "forgetting against what is kept", "xlabel": "forget efficacy", "ylabel": "retention of untouched knowledge",
                   "series": [{"label": "runs", "x": [b["efficacy"], c["efficacy"]], "y": [b["retention"], c["retention"]], "points": True,
                               "names": [BATCHED, f"{CHUNKED} ({self.config.chunk_size})"]}]}]
        return self.result(HOLDS if holds else FAILS, line, numbers, panels, seeds)


register_study(SequentialVsBatch)
