"""GRACE: a codebook of edits at one layer (Hartvigsen et al. 2023, "Aging with GRACE:
Lifelong Model Editing with Discrete Key-Value Adaptors").

A codebook of (key, value, radius, label) entries sits on the MLP of one block. At every
token position the MLP's input h is compared with the keys; if the nearest key k is
within its deferral radius, the MLP's output at that position is *replaced* by k's value,
otherwise the output is untouched, so a prompt that hits no key produces bit-identical
logits (checked in tests/methods/edit/test_grace.py). No weight changes.

Editing (per stage, one edit after another, as in the paper):
- key = the MLP input at the last token of the edit's prompt (one key per training
  template of its relation, all sharing the edit's value);
- value = an MLP output vector optimised so that the model predicts the new object after
  the prompt (all edits of a stage optimised in one batch: `_values.optimize_values`, the editing core's one value optimiser);
- codebook update: a key farther than (nearest radius + `radius`) from every entry is
  added with radius `radius`; one inside with the same label expands that entry's radius
  to cover it; one inside with a different label splits: both radii become half their
  distance (the paper's expand/split rules).

Deviations: distances are relative, ||h - k|| / ||k||, so one `radius` fits any model
width; the value is initialised at the MLP's own output and optimised with Adam (the
paper trains it by gradient descent on the edit loss too); the key is read at the last
prompt token only, as in the paper's "last token" setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_number
from ckl.methods.base import register_method
from ckl.methods.edit._keys import capture
from ckl.methods.edit._memory import MemoryEditor, check_value_options, value_settings
from ckl.methods.edit._values import optimize_values


@dataclass
class GraceConfig:
    layer: int = field(default=-2, metadata={"help": "block whose MLP holds the codebook (negative counts from the end)"})
    radius: float = field(default=0.05, metadata={"help": "initial deferral radius, relative to the key's norm"})
    steps: int = field(default=100, metadata={"help": "Adam steps to learn each value"})
    lr: float = field(default=0.5, metadata={"help": "Adam learning rate for the values"})
    stop_loss: float = field(default=0.05, metadata={"help": "stop optimising an edit's value below this NLL"})

    def __post_init__(self) -> None:
        check_number(self.radius, "radius", low=0, low_open=True)
        check_value_options(self.steps, self.lr, self.stop_loss)


class Grace(MemoryEditor):
    name = "grace"

    def __init__(self, config: GraceConfig) -> None:
        super().__init__(config)
        self.keys = torch.zeros(0, 0)
        self.values = torch.zeros(0, 0)
        self.radii = torch.zeros(0)
        self.labels: list[str] = []

    def empty(self) -> bool:
        return not self.labels

    # ------------------------------------------------------------------ the codebook at work
    def route(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        keys = self.keys.to(h.device, h.dtype)
        dist = torch.cdist(h, keys) / keys.norm(dim=1).clamp(min=1e-12)
        nearest, index = dist.min(dim=1)
        hit = nearest <= self.radii.to(h.device, dist.dtype)[index]
        if not bool(hit.any()):
            return None
        return torch.where(hit[:, None], self.values.to(out.device, out.dtype)[index], out)

    # ------------------------------------------------------------------ editing
    def learn(self, model, mlp, batch, records) -> None:
        c = self.config
        (keys,) = capture(model, batch, [(mlp, "in")], batch.last_pos)
        found = optimize_values(model, mlp, batch, value_settings(c), positions=batch.last_pos, replace=True)
        values, self.last_nll = found.values, found.loss
        for row, g in enumerate(batch.group.tolist()):  # one key per prompt of the edit
            self._insert(keys[row], values[g].cpu(), records[g].fact.object)

    def _insert(self, key: torch.Tensor, value: torch.Tensor, label: str) -> None:
        """The paper's codebook rules for one new (key, value, label)."""
        key, value = key.float().cpu(), value.float().cpu()
        eps = self.config.radius
        if self.labels:
            dist = (self.keys - key).norm(dim=1) / self.keys.norm(dim=1).clamp(min=1e-12)
            d, j = (float(x) for x in dist.min(dim=0))
            j = int(j)
            if d <= float(self.radii[j]) + eps:
                if self.labels[j] == label:  # expand
                    self.radii[j] = max(float(self.radii[j]), d)
                    return
                if d < 1e-6:  # the same key with a new label: the new edit wins
                    self.values[j], self.labels[j] = value, label
                    return
                self.radii[j] = d / 2  # split
                self._add(key, value, d / 2, label)
                return
        self._add(key, value, eps, label)

    def _add(self, key, value, radius: float, label: str) -> None:
        if not self.labels:
            self.keys, self.values = key[None], value[None]
            self.radii = torch.tensor([radius])
        else:
            self.keys = torch.cat([self.keys, key[None]])
            self.values = torch.cat([self.values, value[None]])
            self.radii = torch.cat([self.radii, torch.tensor([radius])])
        self.labels.append(label)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        if not self.labels:
            return {"grace": {"labels": []}}
        return {"grace": {"keys": self.keys, "values": self.values, "radii": self.radii, "labels": list(self.labels)}}

    def load_state_dict(self, state: dict) -> None:
        s = state.get("grace", {})
        self.labels = list(s.get("labels", []))
        if self.labels:
            self.keys, self.values, self.radii = s["keys"].float(), s["values"].float(), s["radii"].float()


register_method("grace", GraceConfig, Grace, "GRACE codebook of edits at one MLP (Hartvigsen et al. 2023); other inputs bit-identical", ["edit", "update"])
