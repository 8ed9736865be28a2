"""Streaming unlearning: deletion requests handled one at a time as they arrive, without the
original training data (after Shen et al. 2025, "Machine Unlearning for Streaming
Forgetting", which casts each request as a shift of the data distribution the model should
fit and updates online, request by request).

An unlearning part (`ckl.methods.unlearn.part`: modes, stopping rule, schedule), always
sequential: request 1's steps, then request 2's, each starting from the model the last
request left. Each step minimises NPO on the request's facts (`objective: npo`, against
the model as it was when the request arrived) or gradient ascent (`ga`), plus, instead of a
retain set drawn from the training data, a data-free estimate of what must stay:

    retain_weight * KL(model at the request's arrival || model) on its own samples

The samples are `samples` documents the stage-start model writes itself (sampled from its
beginning-of-text token), with every sample that names a subject of the stage's requests
dropped, so the term never asks to keep what is to be forgotten. Each request's reference
is a snapshot taken when it arrives, so the KL keeps the model close to where the stream
left it, not to the stage start. How many samples were kept is a row note.

Deviations: the paper estimates the shifted distribution and bounds the streaming regret;
here the remaining distribution is estimated by the model's own samples (the usual data-free
proxy) and each request is a fixed budget of online steps with the shared stopping rule.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.methods.base import StageContext, register_part
from ckl.methods.distill.lwf import distillation_kl
from ckl.methods.scope.attached import host_model
from ckl.methods.unlearn.data import document_rows
from ckl.methods.unlearn.objectives import npo_loss, sequence_logprobs
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning


@dataclass
class StreamForgetConfig(UnlearnConfig):
    mode: str = field(default="sequential", metadata={"help": "always sequential: requests are handled one at a time as they arrive"})
    objective: str = field(default="npo", metadata={"help": "forget objective per request: npo (against the model at the request's arrival) or ga"})
    beta: float = field(default=0.1, metadata={"help": "NPO's inverse temperature"})
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the KL to the model at the request's arrival, on its own samples"})
    samples: int = field(default=64, metadata={"help": "documents the stage-start model writes itself for the retain estimate"})
    sample_tokens: int = field(default=48, metadata={"help": "tokens per self-written document"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "sequential":
            raise ConfigError("mode", f"stream_forget handles requests one at a time: mode must be 'sequential', got {self.mode!r}")
        if self.objective not in ("npo", "ga"):
            raise ConfigError("objective", f"objective must be 'npo' or 'ga', got {self.objective!r}")
        check_number(self.beta, "beta", low=0, low_open=True)
        check_count(self.samples, "samples")
        check_count(self.sample_tokens, "sample_tokens")


class StreamForget(Unlearning):
    name = "stream_forget"
    retain_from_training_data = False  # retain_weight weighs the KL on its own samples instead

    def __init__(self, config: StreamForgetConfig):
        super().__init__(config)
        self.self_samples: list[str] = []
        self.kept_samples: list[int] = []
        self._rows = None
        self._arrived = -1  # the request whose reference snapshot is held

    def prepare(self, model, ctx: StageContext):
        model = super().prepare(model, ctx)
        self._arrived, self._rows, self.self_samples = -1, None, []
        if self.groups and self.config.retain_weight > 0:
            self.self_samples = self._write_samples(model, ctx)
            self.kept_samples.append(len(self.self_samples))
            if self.self_samples:
                self._rows = document_rows(ctx.tokenizer, self.self_samples, self.config.max_length)
        return model

    @torch.no_grad()
    def _write_samples(self, model, ctx: StageContext) -> list[str]:
        lm = host_model(model)
        tokenizer = ctx.tokenizer
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        device = next(lm.parameters()).device
        training = lm.training
        lm.eval()
        ids = torch.full((1, 1), start, dtype=torch.long, device=device)
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, max_new_tokens=self.config.sample_tokens,
                          num_return_sequences=self.config.samples, pad_token_id=tokenizer.eos_token_id)
        lm.train(training)
        texts = [tokenizer.decode(row[1:], skip_special_tokens=True).strip() for row in out.tolist()]
        subjects = {f.subject.lower() for group in self.groups for f in group}
        return [t for t in texts if t and not any(s in t.lower() for s in subjects)]

    def objective(self, model, batch: dict) -> torch.Tensor:
        if self.config.objective == "ga":
            return -model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, _ = sequence_logprobs(logits, batch["labels"])
        ref_logp, _ = sequence_logprobs(self.reference_logits(batch), batch["labels"])
        return npo_loss(logp, ref_logp, self.config.beta)

    def loss(self, model, batch, outputs, step: int) -> torch.Tensor | None:
        if self.done or self.paused or self.schedule is None or self.position >= len(self.schedule):
            return None
        group = self.schedule[self.position][0]
        if group != self._arrived:  # a new request arrives: the model as the stream left it is its reference
            self.reference = copy.deepcopy(host_model(model)).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
            self._arrived = group
        position = self.position
        total = super().loss(model, batch, outputs, step)
        if total is None or self._rows is None or self.config.retain_weight == 0:
            return total
        device = next(model.parameters()).device
        n, size = len(self._rows["input_ids"]), self.config.batch_size
        start = (position * size) % n
        rows = {k: v[start:start + size].to(device) for k, v in self._rows.items()}
        logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
        return total + self.config.retain_weight * distillation_kl(logits, self.reference_logits(rows), rows["attention_mask"], 1.0)

    def row_notes(self) -> dict:
        return {"stream_forget_self_samples": self.kept_samples[-1]} if self.kept_samples else {}


register_part("stream_forget", StreamForgetConfig, StreamForget, "streaming unlearning: requests one at a time, each by NPO (or GA) against the model at its arrival, with a KL on the model's own samples instead of training data", kinds=("forget",))
