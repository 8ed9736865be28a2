"""SMART: smoothness-inducing adversarial regularisation and Bregman proximal point
optimisation (Jiang et al. 2020, "SMART: Robust and Efficient Fine-Tuning for Pre-trained
Natural Language Models through Principled Regularized Optimization").

Each step adds two terms to the next-token loss of the teaching batch:

    adv_weight  * max_{||d|| <= eps} KLsym(f(e + d), f(e))      smoothness (adversarial)
    prox_weight * KLsym(f(e), f_tilde(e))                        Bregman proximal point

over the non-padding positions, e the batch's input embeddings. The inner max takes one
step of projected gradient ascent from Gaussian noise of scale `noise` (the paper's
choice of one step): d <- d + step * g / ||g||_inf, each position's d then clipped to the
`eps` box; the two models' outputs are compared in both directions (KLsym, the paper's
symmetric KL), each side's target detached as in the authors' MT-DNN code. f_tilde is the
momentum model: theta_tilde <- beta * theta_tilde + (1 - beta) * theta after every step
(it starts as the stage-start model, copied at the first step so that it carries the
scope parts' adapters; only trainable weights move), so the update stays in a trust region around the
recent iterates. tests/methods/penalty/test_smart.py shows both working: the trained model
is less sensitive to embedding perturbations than plain fine-tuning leaves it, and it
moves less from where the stage started.

Deviations: the paper fine-tunes classifiers; here the outputs are next-token
distributions at every position. The momentum update runs in the `loss()` hook (the loop
has no post-step hook), so theta_tilde lags one step, as `ema` does. Cost: two more
forward passes and one more backward pass through the noise per step, and a second copy of
the model for f_tilde.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError, check_number
from ckl.methods.base import Part, StageContext, register_part


@dataclass
class SmartConfig:
    adv_weight: float = field(default=1.0, metadata={"help": "lambda_s: weight of the adversarial smoothness term"})
    prox_weight: float = field(default=1.0, metadata={"help": "mu: weight of the Bregman proximal term (KL to the momentum model)"})
    beta: float = field(default=0.99, metadata={"help": "momentum of the proximal model: theta_tilde <- beta * theta_tilde + (1 - beta) * theta"})
    eps: float = field(default=1e-5, metadata={"help": "size of the perturbation box around each input embedding (max norm)"})
    noise: float = field(default=1e-5, metadata={"help": "scale of the Gaussian noise the perturbation starts from"})
    step: float = field(default=1e-3, metadata={"help": "step size of the ascent step on the perturbation"})

    def __post_init__(self) -> None:
        check_number(self.adv_weight, "adv_weight", low=0)
        check_number(self.prox_weight, "prox_weight", low=0)
        check_number(self.eps, "eps", low=0, low_open=True)
        check_number(self.noise, "noise", low=0)
        check_number(self.step, "step", low=0, low_open=True)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 <= self.beta < 1:
            raise ConfigError("beta", f"beta must be a number in [0, 1), got {self.beta!r}")


def symmetric_kl(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_b || p_a) + KL(p_a || p_b) per position, averaged over mask == 1; each side's
    target detached (gradients reach `a` through the first term and `b` through the
    second). a, b: (B, L, V) logits; mask: (B, L)."""
    la, lb = F.log_softmax(a.float(), dim=-1), F.log_softmax(b.float(), dim=-1)
    first = (lb.detach().exp() * (lb.detach() - la)).sum(-1)  # KL(p_b || p_a), moves a
    second = (la.detach().exp() * (la.detach() - lb)).sum(-1)  # KL(p_a || p_b), moves b
    w = mask.to(first.dtype)
    return ((first + second) * w).sum() / w.sum().clamp_min(1.0)


class Smart(Part):
    name = "smart"
    reads_batch = True  # both terms are computed on the teaching batch

    def __init__(self, config: SmartConfig):
        self.config = config
        self.tilde = None  # the momentum model, during a stage only
        self.pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = []

    def prepare(self, model, ctx: StageContext):
        self.tilde, self.pairs = None, []
        return model

    def _start(self, model) -> None:
        """The momentum model, copied at the first step: after every part's `prepare`
        (adapters attached), before any update, so it is the stage-start model."""
        self.tilde = copy.deepcopy(model).eval()
        for p in self.tilde.parameters():
            p.requires_grad_(False)
        self.pairs = [(p, q) for p, q in zip(model.parameters(), self.tilde.parameters()) if p.requires_grad]

    def _momentum(self, device) -> None:
        with torch.no_grad():
            for p, q in self.pairs:
                if q.device != device:
                    q.data = q.data.to(device)
                q.lerp_(p.detach(), 1 - self.config.beta)

    def loss(self, model, batch: dict, outputs, step: int) -> torch.Tensor | None:
        if batch is None:
            return None
        c, mask = self.config, batch["attention_mask"]
        total = None
        if c.adv_weight > 0:
            embeds = model.get_input_embeddings()(batch["input_ids"]).detach()  # (B, L, d)
            clean = outputs.logits.detach()
            delta = (torch.randn_like(embeds) * c.noise).requires_grad_(True)
            ascent = symmetric_kl(model(inputs_embeds=embeds + delta, attention_mask=mask).logits, clean, mask)
            (grad,) = torch.autograd.grad(ascent, delta)
            with torch.no_grad():
                scale = grad.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)  # ||g||_inf per position
                delta = (delta + c.step * grad / scale).clamp(-c.eps, c.eps)
            perturbed = model(inputs_embeds=embeds + delta, attention_mask=mask).logits
            total = c.adv_weight * symmetric_kl(perturbed, outputs.logits, mask)
        if c.prox_weight > 0:
            if self.tilde is None:
                self._start(model)
            self._momentum(batch["input_ids"].device)  # theta_tilde after step - 1
            with torch.no_grad():
                anchor = self.tilde(input_ids=batch["input_ids"], attention_mask=mask).logits
            prox = c.prox_weight * symmetric_kl(outputs.logits, anchor, mask)
            total = prox if total is None else total + prox
        return total

    def finish(self, model, ctx: StageContext):
        self.tilde, self.pairs = None, []
        return model


register_part("smart", SmartConfig, Smart, "SMART: adversarial smoothness on the input embeddings + Bregman proximal term to a momentum model (Jiang et al. 2020)")
