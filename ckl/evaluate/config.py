"""`ExtractionConfig`, the options of the text-target metrics, in a module that imports no
torch, so that an experiment config is read and checked before torch is loaded (the
metrics themselves: ckl.evaluate.extraction)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckl.core.checks import check_count


@dataclass
class ExtractionConfig:
    """Options of the text-target metrics (`eval.unlearning` in an experiment)."""

    ngram: int = field(default=10, metadata={"help": "n of EL_n (Jang et al. 2023 report EL_10); answers shorter than n get no EL"})
    stride: int = field(default=1, metadata={"help": "EL_n prefix lengths are prompt, prompt+stride, ... (1 = every position, as in the paper)"})
    distinct: int = field(default=2, metadata={"help": "n of distinct-n on answers generated for forgotten prompts"})
    max_facts: int = field(default=200, metadata={"help": "most facts per cohort measured (the first ones, in probe order)"})
    batch_size: int = field(default=128, metadata={"help": "sequences per forward pass"})

    def __post_init__(self) -> None:
        for name in ("ngram", "stride", "distinct", "max_facts", "batch_size"):
            check_count(getattr(self, name), name)
