"""Gradient ascent (GA) on the forget set: maximise the next-token loss of the forget
facts' text (Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in
Language Models"), until a stopping rule says they are forgotten.

The paper stops when the forget sequences' extraction likelihood and memorisation
accuracy fall below their level on text the model never saw; here the rule is the
forget facts' greedy exact match on their trained prompts (`stop_accuracy`, default 0:
the level of a fact the model never saw) or their mean answer log-probability per token
(`stop_logprob`), checked before every step (`ckl.methods.unlearn.part`).

Deviations: the paper's targets are raw text sequences; here they are the forget facts
rendered with the training templates (biography statements and question-answer lines,
one document per row), and the ascent acts on every token of them, the template words
included, as the paper's does on whole sequences. The loss is unbounded below, so a
long run drives the model's outputs anywhere: the stopping rule is part of the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ckl.methods.base import register_part
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning


@dataclass
class GaConfig(UnlearnConfig):
    """Gradient ascent has only the shared unlearning options."""


class GradientAscent(Unlearning):
    name = "ga"

    def objective(self, model, batch: dict) -> torch.Tensor:
        return -model(**batch).loss


register_part("ga", GaConfig, GradientAscent, "gradient ascent on the forget facts' text, stopped when they are forgotten (Jang et al. 2023)", kinds=("forget",))
