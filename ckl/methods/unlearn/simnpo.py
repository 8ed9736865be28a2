"""SimNPO: reference-free, length-normalised NPO (Fan et al. 2024, "Simplicity Prevails:
Rethinking Negative Preference Optimization for LLM Unlearning").

loss = -(2 / beta) * mean over forget documents of log sigmoid(-(beta / |y|) log pi(y) - gamma),
with |y| the document's token count and gamma a reward margin
(`ckl.methods.unlearn.objectives.simnpo_loss`). No reference model: the per-token mean
log-likelihood replaces NPO's log-ratio, so long and short documents are weighed by how
likely each token is, not by their length. retain_weight > 0 adds the paper's retain
next-token loss.

Deviation: documents are forget facts rendered with the training templates (see
`ckl.methods.unlearn.data`), the likelihood over all their tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import register_part
from ckl.methods.unlearn.objectives import sequence_logprobs, simnpo_loss
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning


@dataclass
class SimNpoConfig(UnlearnConfig):
    beta: float = field(default=2.5, metadata={"help": "inverse temperature beta (> 0)"})
    gamma: float = field(default=0.0, metadata={"help": "reward margin gamma (>= 0)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.beta, "beta", 0, low_open=True)
        check_number(self.gamma, "gamma", 0)


class SimNpo(Unlearning):
    name = "simnpo"

    def objective(self, model, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
        logp, lengths = sequence_logprobs(logits, batch["labels"])
        return simnpo_loss(logp, lengths, self.config.beta, self.config.gamma)


register_part("simnpo", SimNpoConfig, SimNpo, "SimNPO: reference-free, length-normalised NPO with a margin (Fan et al. 2024)", kinds=("forget",))
