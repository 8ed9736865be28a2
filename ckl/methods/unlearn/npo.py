"""NPO: negative preference optimisation (Zhang et al. 2024, "Negative Preference
Optimization: From Catastrophic Collapse to Effective Unlearning").

loss = (2 / beta) * mean over forget documents of log(1 + (pi(y) / pi_ref(y))^beta),
with pi(y) a document's likelihood under the model and pi_ref under a frozen copy of the
stage-start model (`ckl.methods.unlearn.objectives.npo_loss`). The loss is >= 0 and its
gradient is gradient ascent's scaled by 2 * sigmoid(beta * log(pi / pi_ref)), which
vanishes as the document becomes unlikely: NPO slows down by itself where GA runs away.
With retain_weight > 0 it is the paper's NPO+RT (next-token loss on retained facts).

Deviations: a "document" is a forget fact rendered with a training template (see
`ckl.methods.unlearn.data`), its likelihood summed over all its tokens (the paper uses
the answer given the question); in sequential mode the reference stays the stage-start
model for every request. Cost: a second model in memory and a reference forward per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import register_part
from ckl.methods.unlearn.objectives import npo_loss, sequence_logprobs
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning


@dataclass
class NpoConfig(UnlearnConfig):
    beta: float = field(default=0.1, metadata={"help": "inverse temperature beta of the NPO loss (> 0)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.beta, "beta", 0, low_open=True)


class Npo(Unlearning):
    name = "npo"
    uses_reference = True

    def objective(self, model, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
        logp, _ = sequence_logprobs(logits, batch["labels"])
        ref_logp, _ = sequence_logprobs(self.reference_logits(batch), batch["labels"])
        return npo_loss(logp, ref_logp, self.config.beta)


register_part("npo", NpoConfig, Npo, "NPO: negative preference optimisation against the frozen stage-start model (Zhang et al. 2024)", kinds=("forget",))
