"""Fwd-Prompt-style prompt tuning: one prompt of input-only tokens, shared by every stage
and trained in each, whose updates after the first stage stay in the residual space of
the earlier stages' (after Zheng et al. 2024, "Beyond Anti-Forgetting: Multimodal
Continual Instruction Tuning with Positive Forward Transfer", Fwd-Prompt: prompt
gradients projected into the residual space of old tasks, so that a new task does not
overwrite what the prompt holds for the old ones). The model's own weights never change.

The prompt (`tokens` input-only tokens, ckl.methods.scope._tokens) goes in front of every
training document and probe. After each stage its update's row space (the directions of
the embedding space the stage wrote in, the top singular vectors covering `energy` of the
update) joins a basis B of the old stages' space; in every later stage each optimiser
step's change to the prompt is projected onto the residual, P <- P_start + (P -
P_start)(I - B B^T), so the prompt's components along B are exactly those the earlier
stages left (a projected *update*, not a projected gradient: Adam rescales a gradient
element-wise and would leave the subspace; as `kore` does with Adam-NSCL's projection).
The basis size is a row note (`fwd_prompt_basis`).

Deviations: the old tasks' space is spanned by their prompt updates, not by their input
features; no projection into the pre-trained space for positive forward transfer; one
prompt, no instruction-specific prompt selection. Forget requests are not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import StageContext, register_method
from ckl.methods.scope._tokens import PromptTokens, PromptTokensConfig
from ckl.train.loop import LossTerm


@dataclass
class FwdPromptConfig(PromptTokensConfig):
    energy: float = field(default=0.95, metadata={"help": "share of a stage's prompt update (squared singular values) whose directions the later stages may not change, in (0, 1]"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.energy, "energy", low=0, high=1, low_open=True)


class _Residual(LossTerm):
    """After every optimiser step, the prompt's change since the stage's start projected
    onto the residual of the old stages' basis."""

    def __init__(self, param: torch.nn.Parameter, basis: torch.Tensor):
        self.param, self.basis = param, basis.to(param.device)
        self.start = param.detach().clone()

    def after_step(self, model, step: int) -> None:
        with torch.no_grad():
            change = self.param - self.start
            self.param.copy_(self.start + change - (change @ self.basis) @ self.basis.T)


class FwdPrompt(PromptTokens):
    name = "fwd_prompt"
    module_name = "fwd_prompt_tokens"

    def __init__(self, config: FwdPromptConfig) -> None:
        super().__init__(config)
        self.basis: torch.Tensor | None = None  # (d, k), orthonormal columns: the old stages' directions
        self.start: torch.Tensor | None = None

    def grows(self, stage: int) -> bool:
        return not self.banks  # one prompt for every stage

    def terms(self, model, ctx: StageContext) -> list:
        param = self.bank.banks[0]
        self.start = param.detach().clone()
        return [] if self.basis is None else [_Residual(param, self.basis)]

    def after_training(self, model, ctx: StageContext, documents) -> None:
        update = (self.bank.banks[0].detach() - self.start).float().cpu()
        self.start = None
        _, s, vh = torch.linalg.svd(update, full_matrices=False)
        if float((s**2).sum()) == 0:
            return
        share = torch.cumsum(s**2, 0) / (s**2).sum()
        k = int((share < self.config.energy).sum()) + 1
        directions = vh[:k].T  # (d, k)
        if self.basis is not None:  # only what the basis does not hold yet, orthonormalised
            directions = directions - self.basis @ (self.basis.T @ directions)
        q, r = torch.linalg.qr(directions)
        new = q[:, r.diagonal().abs() > 1e-6]
        self.basis = new if self.basis is None else torch.cat([self.basis, new], dim=1)

    def row_notes(self) -> dict:
        return {} if self.basis is None else {"fwd_prompt_basis": int(self.basis.shape[1])}

    def extra_state(self) -> dict:
        return {} if self.basis is None else {"basis": self.basis.clone()}

    def load_extra_state(self, state: dict) -> None:
        basis = state.get("basis")
        self.basis = basis.clone().float() if isinstance(basis, torch.Tensor) else None


register_method("fwd_prompt", FwdPromptConfig, FwdPrompt, "Fwd-Prompt-style prompt tuning: one prompt for every stage, each later stage's update to it kept out of the directions earlier stages wrote in; no weight change", ["learn", "update", "edit"])
