"""`PretrainConfig`: how to pretrain the default base model, in a module that imports no
torch, so that `ckl pretrain`'s options can be built from its fields at every `ckl` start
(the checks that need the model and the loop import them when a config is made)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckl.core.checks import ConfigError, check_count, check_flag, check_number


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
        from ckl.train.loop import TrainConfig

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
