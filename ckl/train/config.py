"""`TrainConfig` (the training loop's settings) and `PretrainConfig` (how to pretrain the
default base model), in a module that imports no torch, so that `ckl pretrain`'s options
can be built from their fields at every `ckl` start and an experiment config is read and
checked before torch is loaded (the checks that need the model import it when a
`PretrainConfig` is made)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ckl.core.checks import ConfigError, check_count, check_flag, check_number, did_you_mean

OPTIMIZERS = ("adamw", "adamw_fused")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training method."""

    epochs: int = field(default=10, metadata={"help": "passes over the stage's training text"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=16, metadata={"help": "blocks per optimiser step (per process)"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed block"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    schedule: str = field(default="constant", metadata={"help": "learning-rate schedule: constant | cosine (to 10% of lr over all epochs)"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle each epoch's documents before packing them into blocks (see `train`)"})
    until: float = field(default=0.0, metadata={"help": "stop once the stage's new and updated facts are known at this statement accuracy, checked every `check_every` epochs; `epochs` is then the budget (0 = train every epoch)"})
    check_every: int = field(default=5, metadata={"help": "epochs between the checks of `until`"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw (torch's AdamW, multi-tensor) | adamw_fused (its fused kernel, where torch has one for the device; same maths, other rounding)"})
    eval_every: int = field(default=0, metadata={"help": "score chosen cohorts inside the stage every this many optimiser steps, stored as a curve (0 = off); with eval_spacing log, points per tenfold of steps"})
    eval_spacing: str = field(default="linear", metadata={"help": "linear: every eval_every steps | log: eval_every points per tenfold of steps (1, 2, 3, 4, 5, 6, 8, 10, 13, ... for 10), for power-law fits"})
    eval_cohorts: tuple[str, ...] = field(default=("invariant", "stage"), metadata={"help": "cohorts scored at each point: names (invariant, stage2) or prefixes (stage, stale, forget, local: every stage's)"})
    eval_sample: int = field(default=10, metadata={"help": "at most this many probes per cohort and probe kind at each point, the same seeded subset at every point (0 = all); a point costs about one forward pass per probe (bench/eval_curve.py)"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "block_size"):
            check_count(getattr(self, name), name)
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.weight_decay, "weight_decay", low=0)
        check_number(self.max_grad_norm, "max_grad_norm", low=0)
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError("schedule", f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not isinstance(self.shuffle, bool):
            raise ConfigError("shuffle", f"shuffle must be true or false, got {self.shuffle!r}")
        if isinstance(self.until, bool) or not isinstance(self.until, (int, float)) or not 0 <= self.until <= 1:
            raise ConfigError("until", f"until must be a number in [0, 1] (0 = off), got {self.until!r}")
        check_count(self.check_every, "check_every")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        check_count(self.eval_every, "eval_every", low=0)
        if self.eval_spacing not in ("linear", "log"):
            raise ConfigError("eval_spacing", f"eval_spacing must be 'linear' or 'log', got {self.eval_spacing!r}")
        if isinstance(self.eval_cohorts, str):  # one name given bare
            self.eval_cohorts = (self.eval_cohorts,)
        if not isinstance(self.eval_cohorts, (list, tuple)) or not self.eval_cohorts or not all(isinstance(c, str) and c for c in self.eval_cohorts):
            raise ConfigError("eval_cohorts", f"eval_cohorts must be a non-empty list of cohort names or prefixes, got {self.eval_cohorts!r}")
        self.eval_cohorts = tuple(self.eval_cohorts)
        from ckl.data import cohorts

        for selector in self.eval_cohorts:
            if not cohorts.is_selector(selector):
                known = [cohorts.INVARIANT, cohorts.UNSEEN, *cohorts.PREFIXES]
                raise ConfigError("eval_cohorts", f"eval_cohorts: {selector!r} is not a cohort{did_you_mean(selector, known)} "
                                  f"(names: invariant, unseen, stage1, stale2, ...; prefixes for every stage's: {', '.join(cohorts.PREFIXES)})")
        check_count(self.eval_sample, "eval_sample", low=0)

    def evaluates_at(self, step: int) -> bool:
        """Whether the in-stage curve (`eval_every`) has a point after optimiser step `step`
        (step 0: before the first step, always a point when curves are on)."""
        if not self.eval_every:
            return False
        if step == 0 or self.eval_spacing == "linear":
            return step % self.eval_every == 0
        # log: the steps round(10 ** (k / eval_every)), k = 0, 1, ...; step s is one of them
        # when some k rounds to it, i.e. the k nearest to eval_every * log10(s) does
        k = round(self.eval_every * math.log10(step))
        return any(kk >= 0 and round(10 ** (kk / self.eval_every)) == step for kk in (k - 1, k, k + 1))



@dataclass
class PretrainConfig:
    """How to pretrain the default model (measured defaults: see README)."""

    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_embd: int = field(default=256, metadata={"help": "hidden width"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_inner: int = field(default=0, metadata={"help": "MLP hidden width, the keys ROME and MEMIT write to (0 = 4 x n_embd)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=16, metadata={"help": "blocks per step"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed block"})
    max_epochs: int = field(default=300, metadata={"help": "epoch budget"})
    max_seconds: float = field(default=0.0, metadata={"help": "wall-time budget in seconds (0 = none)"})
    target: float = field(default=0.97, metadata={"help": "stop when invariant statement accuracy reaches this"})
    knowledge_target: float = field(default=0.8, metadata={"help": "...and paraphrase and extraction accuracy reach this (0 = statements only). Waited for only where the stream teaches the form: extraction with a QA half (qa_subjects), paraphrase with background text that reads the held-out phrasings"})
    eval_every: int = field(default=5, metadata={"help": "epochs between accuracy checks"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule over max_epochs: constant | cosine"})
    refusals: bool = field(default=False, metadata={"help": "add the words of TOFU's refusal sentences (ckl.data.formats.refusals) to the tokenizer, so the idk unlearning part can teach them"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle each epoch's documents before packing (needed to memorise verbatim text: ckl.train.loop.train)"})
    biographies: int = field(default=3, metadata={"help": "biographies per person per epoch, each in its own fact order and templates (Physics of LMs 3.1's multiplicity; 3 makes the model store a person's facts at their name, where ROME and MEMIT edit: docs/knowledge.md)"})
    questions: int = field(default=2, metadata={"help": "question-answer lines per QA-trained person per epoch (-1 = one per fact)"})
    seed: int = field(default=0, metadata={"help": "initialisation and data order"})
    copy_fraction: float = field(default=0.0, metadata={"help": "copy-from-context documents per base fact per epoch (ckl.data.copy_mix; for in-context editing)"})
    target_facts: str = field(default="invariant", metadata={"help": "facts the target is measured on: invariant | base (all of K0, e.g. for editing streams)"})

    def __post_init__(self) -> None:
        from ckl.model import lm

        lm.TinyModelConfig(self.n_layer, self.n_embd, self.n_head, n_inner=self.n_inner)  # validates the shape (ConfigError names the field)
        try:
            TrainConfig(epochs=self.max_epochs, lr=self.lr, batch_size=self.batch_size, block_size=self.block_size, schedule=self.schedule, shuffle=self.shuffle)
        except ConfigError as err:  # the loop's names -> this config's
            field = {"epochs": "max_epochs"}.get(err.field, err.field)
            raise ConfigError(field, str(err).replace(f"{err.field} must", f"{field} must", 1)) from None
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) or not 0 < self.target <= 1:
            raise ConfigError("target", f"target must be in (0, 1], got {self.target!r}")
        if isinstance(self.knowledge_target, bool) or not isinstance(self.knowledge_target, (int, float)) or not 0 <= self.knowledge_target <= 1:
            raise ConfigError("knowledge_target", f"knowledge_target must be in [0, 1], got {self.knowledge_target!r}")
        check_count(self.eval_every, "eval_every")
        check_number(self.max_seconds, "max_seconds", low=0)
        check_number(self.copy_fraction, "copy_fraction", low=0)
        check_flag(self.refusals, "refusals")
        check_count(self.biographies, "biographies")
        if isinstance(self.questions, bool) or not isinstance(self.questions, int) or self.questions < -1:
            raise ConfigError("questions", f"questions must be an integer >= -1 (-1 = every fact's), got {self.questions!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", f"seed must be an integer, got {self.seed!r}")
        if self.target_facts not in ("invariant", "base"):
            raise ConfigError("target_facts", f"target_facts must be 'invariant' or 'base', got {self.target_facts!r}")
