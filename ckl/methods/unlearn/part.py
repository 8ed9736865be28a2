"""The machinery every unlearning part shares: forget data, modes, the stopping rule and
the retain term. A part file only says what its objective is (`Unlearning.objective`) and,
for target-substituting methods, which text to train on (`Unlearning.targets`).

Per stage (hooks of `ckl.methods.base.Part`, called by the one training loop):

- `prepare`: the stage's forget requests (`ctx.change.forget`) become groups: one group
  of all of them (`mode: batched`) or one group per request (`mode: sequential`; per
  `chunk_size` requests with a larger chunk size). Each
  group's text is its facts rendered with the training templates, one document a row.
- `steps`: the loop runs at least one pass over the forget batches per epoch, so a stage
  with nothing but forget requests trains too (its steps have no teaching batch).
  The schedule is `epochs` passes over the group's batches; batched: pass after pass over
  all requests; sequential: request 1's passes, then request 2's, ...
- `loss`: weight * objective(next forget batch) [+ retain_weight * retain term on a
  batch of retained facts: next-token loss (`nll`) or KL to the stage-start model (`kl`)].
- `should_stop` (before every step, every `check_every` steps and at each request's
  start): the current group's facts are scored (greedy exact match and answer
  log-probability on their statement and question probes, the trained forms; held-out
  paraphrases are left to the evaluation). When the rule holds (accuracy <= stop_accuracy
  or mean log-probability per answer token <= stop_logprob) the group is done:
  sequential mode moves to the next request, skipping the rest of this one's budget.
  When every group is done, a stage with only forget requests stops training. In a stage
  that also teaches, the part pauses (adds no loss) while the teaching goes on, and checks
  again: teaching other facts can bring forgotten ones back, and then it resumes (the
  schedule starts again from the first request, as often as the teaching lasts).
- `observe`: the retain pool follows the stage's updates, new facts and deletions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.facts import Fact
from ckl.methods.base import Part, StageContext
from ckl.methods.distill.lwf import distillation_kl
from ckl.methods.unlearn.data import RetainPool, TextBatches
from ckl.data.stream import Change, make_probes


@dataclass
class UnlearnConfig:
    """Options shared by every unlearning part (each part's config extends it)."""

    mode: str = field(default="batched", metadata={"help": "batched: all of a stage's forget requests together; sequential: one request at a time (or `chunk_size` at a time), each with its own steps"})
    chunk_size: int = field(default=1, metadata={"help": "sequential mode: requests per group, unlearned together before the next group (Jang et al. 2023's chunks)"})
    weight: float = field(default=1.0, metadata={"help": "weight of the forget objective in the step's loss"})
    batch_size: int = field(default=8, metadata={"help": "forget (and retain) documents per step"})
    max_length: int = field(default=128, metadata={"help": "tokens per forget / retain document (longer ones are cut)"})
    retain_weight: float = field(default=0.0, metadata={"help": "weight of the retain term on known facts the stage does not touch (0 = off)"})
    retain_loss: str = field(default="nll", metadata={"help": "retain term: nll (next-token loss) or kl (KL to the stage-start model)"})
    retain_facts: int = field(default=64, metadata={"help": "most facts in the retain set (a reservoir of the known facts, kept true across stages)"})
    stop_accuracy: float | None = field(default=0.0, metadata={"help": "stop once the forget facts' exact match is <= this (null = no accuracy rule)"})
    stop_logprob: float | None = field(default=None, metadata={"help": "stop once their mean log-probability per answer token is <= this (null = no likelihood rule)"})
    check_every: int = field(default=1, metadata={"help": "evaluate the stopping rule every this many steps"})

    def __post_init__(self) -> None:
        if self.mode not in ("batched", "sequential"):
            raise ConfigError("mode", f"mode must be 'batched' or 'sequential', got {self.mode!r}")
        if self.retain_loss not in ("nll", "kl"):
            raise ConfigError("retain_loss", f"retain_loss must be 'nll' or 'kl', got {self.retain_loss!r}")
        check_number(self.weight, "weight", 0)
        check_number(self.retain_weight, "retain_weight", 0)
        check_number(self.stop_accuracy, "stop_accuracy", 0, optional=True, high=1)
        check_number(self.stop_logprob, "stop_logprob", optional=True, high=0)  # a log-probability: above 0 would stop at once
        for name in ("batch_size", "max_length", "retain_facts", "check_every", "chunk_size"):
            check_count(getattr(self, name), name)


class Unlearning(Part):
    """Base of the unlearning parts; subclasses set `name` and define `objective`."""

    kinds = frozenset({"forget"})
    uses_reference = False  # the objective needs the frozen stage-start model (NPO)
    # `retain_weight` weighs a retain set of known facts (training data) by default; a part
    # that keeps what must stay by other means (streaming unlearning's own samples) says False
    retain_from_training_data = True

    def __init__(self, config: UnlearnConfig):
        self.config = config
        self.pool = RetainPool(config.retain_facts)
        self.history: list[dict] = []  # stopping-rule checks of the last stage: step, group, accuracy, logprob
        self._reset()

    # ------------------------------------------------------------------ what a part defines
    def objective(self, model, batch: dict) -> torch.Tensor:
        """The loss on one forget batch (rows of the group's target text)."""
        raise NotImplementedError

    def targets(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        """The facts whose text the objective trains on: the forget facts themselves, or
        substitutes (IDK answers, alternative answers)."""
        return facts

    # ------------------------------------------------------------------ hooks
    def prepare(self, model, ctx: StageContext):
        self._reset()
        self.ctx = ctx
        forget = list(ctx.change.forget) if ctx.change is not None else []
        self.teaching = bool(ctx.change is not None and ctx.change.taught())
        size = self.config.chunk_size
        self.groups = [forget] if self.config.mode == "batched" and forget else [forget[i : i + size] for i in range(0, len(forget), size)]
        c = self.config
        self.texts = [  # every form of a fact to forget, the extraction form too (it answers; it goes)
            TextBatches(self.targets(g, ctx), ctx.relations, ctx.tokenizer, ctx.seed, ("forget", ctx.stage, k), c.batch_size, c.max_length)
            for k, g in enumerate(self.groups)
        ]
        self.done = not self.groups
        retain = c.retain_weight > 0 and self.retain_from_training_data
        if self.groups and (self.uses_reference or (retain and c.retain_loss == "kl")):
            self.reference = copy.deepcopy(model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        if retain:
            self.pool.start(ctx.base, ctx.seed)  # from the first stage on, so that `observe` keeps it true
            kept = self.pool.sample(ctx.change)
            if kept and self.groups:
                # the retain set keeps what pretraining taught: no question about a person outside the QA half
                self.retain = TextBatches(kept, ctx.relations, ctx.tokenizer, ctx.seed, ("retain", ctx.stage), c.batch_size, c.max_length, ctx.qa_subjects)
        return model

    def steps(self, epoch: int, epochs: int) -> int:
        if self.done or self.paused:
            return 0
        if self.schedule is None:
            if self.config.mode == "batched":
                self.schedule = [(0, p, i) for p in range(epochs) for i in range(self.texts[0].per_pass)]
            else:
                self.schedule = [(g, p, i) for g, t in enumerate(self.texts) for p in range(epochs) for i in range(t.per_pass)]
            self.starts = {g: next(k for k, item in enumerate(self.schedule) if item[0] == g) for g in range(len(self.groups))}
        return sum(t.per_pass for t in self.texts)

    def should_stop(self, model, step: int) -> bool:
        if self.done or self.schedule is None:
            return self.done and not self.teaching
        if self.position >= len(self.schedule):  # the budget is spent
            if not self.teaching:
                self.done = True
                return True
            self.position = 0  # the teaching goes on: go round again
        at_start = not self.paused and self.position == self.starts[self._group()]
        if step % self.config.check_every == 0 or at_start:
            self.paused = False
            while self._forgotten(model, step):
                group = self._group()
                if group + 1 < len(self.groups):
                    self.position = self.starts[group + 1]  # sequential: the next request
                elif self.teaching:
                    self.position, self.paused = 0, True  # all forgotten: pause, look again later
                    break
                else:
                    self.done = True
                    break
        return self.done

    def loss(self, model, batch, outputs, step: int) -> torch.Tensor | None:
        if self.done or self.paused or self.schedule is None or self.position >= len(self.schedule):
            return None
        group, pass_, index = self.schedule[self.position]
        self.position += 1
        device = next(model.parameters()).device
        total = self.config.weight * self.objective(model, self.texts[group].get(pass_, index, device))
        if self.retain is not None:
            total = total + self.config.retain_weight * self._retain_term(model, self.retain.cycle(self.retain_step, device))
            self.retain_step += 1
        return total

    def finish(self, model, ctx: StageContext):
        history = self.history
        self._reset()
        self.history = history
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        if self.pool.started:
            self.pool.observe(change, ctx.seed)

    def state_dict(self) -> dict:
        return self.pool.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pool = RetainPool(self.config.retain_facts)
        self.pool.load_state_dict(state)

    # ------------------------------------------------------------------ helpers
    def reference_logits(self, batch: dict) -> torch.Tensor:
        """The frozen stage-start model's logits on `batch` (B, L, V)."""
        device = batch["input_ids"].device
        if next(self.reference.parameters()).device != device:  # the loop moves the model, not the copy
            self.reference.to(device)
        with torch.no_grad():
            return self.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _retain_term(self, model, batch: dict) -> torch.Tensor:
        if self.config.retain_loss == "nll":
            return model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return distillation_kl(logits, self.reference_logits(batch), batch["attention_mask"], 1.0)

    def _reset(self) -> None:
        self.ctx = None
        self.groups: list[list[Fact]] = []
        self.texts: list[TextBatches] = []
        self.schedule: list[tuple[int, int, int]] | None = None
        self.starts: dict[int, int] = {}
        self.position = 0
        self.done = True
        self.paused = False
        self.teaching = False
        self.reference = None
        self.retain: TextBatches | None = None
        self.retain_step = 0
        self.history = []

    def _group(self) -> int:
        return self.schedule[min(self.position, len(self.schedule) - 1)][0]

    def _forgotten(self, model, step: int) -> bool:
        """Score the current group's forget facts; True when the stopping rule holds."""
        from ckl.model.scoring import score_probes  # evaluation sits downstream of training

        c, ctx, group = self.config, self.ctx, self._group()
        if c.stop_accuracy is None and c.stop_logprob is None:
            return False
        facts = self.groups[group]
        probes = make_probes(facts, ctx.relations, "forget", ctx.stage, "forget", ("statement", "question"), 1)
        net = ctx.accelerator.unwrap_model(model) if ctx.accelerator is not None else model
        was_training = net.training
        scores = score_probes(net, ctx.tokenizer, probes)
        net.train(was_training)
        lengths = np.array([len(ids) for ids in ctx.tokenizer([" " + p.answer for p in probes], add_special_tokens=False)["input_ids"]])
        accuracy = float(scores.em.mean())
        logprob = float((scores.logprob / np.maximum(lengths, 1)).mean())
        accelerator = ctx.accelerator
        if accelerator is not None and accelerator.num_processes > 1:
            # every rank scores the same model, but a near-tie can round differently on
            # different devices; one rank stopping while another steps would hang the
            # next all-reduce, so all decide on the mean of their measurements
            both = accelerator.reduce(torch.tensor([accuracy, logprob], dtype=torch.float64, device=accelerator.device), reduction="mean")
            accuracy, logprob = (float(v) for v in both.cpu())
        self.history.append({"step": step, "group": group, "accuracy": accuracy, "logprob": logprob})
        return (c.stop_accuracy is not None and accuracy <= c.stop_accuracy) or (c.stop_logprob is not None and logprob <= c.stop_logprob)


def substitute(facts: list[Fact], objects: list[str]) -> list[Fact]:
    """The facts with other objects (same id, subject and relation)."""
    return [replace(f, object=o) for f, o in zip(facts, objects)]
