"""A gated key-value memory of edited facts, in the spirit of NeuralDB (Wang et al. 2025,
"NeuralDB: Scaling Knowledge Editing in LLMs to 100,000 Facts with Neural KV Database").

Edited facts are stored as (key, value) pairs beside the MLP of one block. At every token
position the MLP input h is compared with the keys by cosine similarity; the best key's
value is *added* to the MLP output there, times a gate that is exactly zero when the
similarity is below `threshold`:

    out(h) = MLP(h) + gate(h) * v_best,   gate(h) = 1[cos(h, k_best) >= threshold]

so any input that matches no key gives bit-identical outputs (tests/methods/edit/test_kv_memory.py).
No weight changes; keys and values live in the method's state (safetensors checkpoints).

Editing (per stage, all edits in one batch):
- key = the MLP input at the last token of the edit prompt (`position: last`, the
  default) or at the subject's last token (`position: subject`, where ROME and NeuralDB
  read a fact's key), one key per training template of its relation, all sharing the
  edit's value;
- value = a residual optimised so that the model predicts the new object after every
  training prompt of the edit, with an L2 pull toward zero (`_values.optimize_values`,
  the editing core's one value optimiser: the ROME/NeuralDB v* objective without the KL term);
- a later edit of the same fact replaces its entry.

Deviations from NeuralDB: a hard top-1 gate instead of its learned non-linear gated
retrieval; values from the v* objective directly (NeuralDB derives them from an
AlphaEdit-style residual); no prefix contexts in the value objective; keys at the prompt's
last token by default, because in the 2-layer models ckl trains from scratch a residual at
the subject's last token barely moves the prediction (on the test model, one edit's NLL
stalls at 7.8 nats after 100 Adam steps on a residual at the subject, at 3.6 nats at the
last token, where the new object becomes the greedy answer: tests/methods/edit/test_kv_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ckl.core.checks import ConfigError, check_number
from ckl.methods.base import register_method
from ckl.methods.edit._keys import capture
from ckl.methods.edit._memory import MemoryEditor, check_value_options, value_settings
from ckl.methods.edit._values import optimize_values


@dataclass
class KVMemoryConfig:
    layer: int = field(default=-1, metadata={"help": "block whose MLP output the memory adds to (negative counts from the end)"})
    position: str = field(default="last", metadata={"help": "where keys are read and values written: last (the prompt's last token) | subject (its last token, as NeuralDB)"})
    threshold: float = field(default=0.9, metadata={"help": "cosine similarity at or above which a key's value is added (the gate)"})
    steps: int = field(default=100, metadata={"help": "Adam steps to learn the values"})
    lr: float = field(default=0.5, metadata={"help": "Adam learning rate for the values"})
    decay: float = field(default=0.01, metadata={"help": "L2 pull of each value toward zero, relative to the MLP output's norm"})
    stop_loss: float = field(default=0.05, metadata={"help": "stop optimising an edit's value below this NLL"})

    def __post_init__(self) -> None:
        check_number(self.threshold, "threshold", low=-1, high=1)
        if self.position not in ("last", "subject"):
            raise ConfigError("position", f"position must be 'last' or 'subject', got {self.position!r}")
        check_value_options(self.steps, self.lr, self.stop_loss)
        check_number(self.decay, "decay", low=0)


class KVMemory(MemoryEditor):
    name = "kv_memory"

    def __init__(self, config: KVMemoryConfig) -> None:
        super().__init__(config)
        self.keys = torch.zeros(0, 0)  # unit vectors
        self.values = torch.zeros(0, 0)
        self.ids: list[str] = []

    def empty(self) -> bool:
        return not self.ids

    def route(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        sim = F.normalize(h, dim=1) @ self.keys.to(h.device, h.dtype).T
        best, index = sim.max(dim=1)
        gate = best >= self.config.threshold
        if not bool(gate.any()):
            return None
        return torch.where(gate[:, None], out + self.values.to(out.device, out.dtype)[index], out)

    def learn(self, model, mlp, batch, records) -> None:
        c = self.config
        where = batch.last_pos if c.position == "last" else batch.subject_pos
        (keys,) = capture(model, batch, [(mlp, "in")], where)
        found = optimize_values(model, mlp, batch, value_settings(c, weight_decay=c.decay, decay="squared"), positions=where)
        self.last_nll = found.loss
        ids = [records[g].fact.id for g in batch.group.tolist()]  # one key per prompt of the edit
        self._store(ids, F.normalize(keys, dim=1).cpu(), found.delta[batch.group.to(found.delta.device)].cpu())

    def _store(self, ids: list[str], keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append the entries; a re-edited fact's earlier entries are dropped first."""
        if self.ids:
            new = set(ids)
            keep = torch.tensor([fid not in new for fid in self.ids])
            self.keys, self.values = torch.cat([self.keys[keep], keys.float()]), torch.cat([self.values[keep], values.float()])
            self.ids = [fid for fid, k in zip(self.ids, keep.tolist()) if k] + list(ids)
        else:
            self.keys, self.values, self.ids = keys.float(), values.float(), list(ids)

    def state_dict(self) -> dict:
        if not self.ids:
            return {"kv_memory": {"ids": []}}
        return {"kv_memory": {"keys": self.keys, "values": self.values, "ids": list(self.ids)}}

    def load_state_dict(self, state: dict) -> None:
        s = state.get("kv_memory", {})
        self.ids = list(s.get("ids", []))
        if self.ids:
            self.keys, self.values = s["keys"].float(), s["values"].float()


register_method("kv_memory", KVMemoryConfig, KVMemory, "gated key-value memory of edits beside one MLP (NeuralDB-style); other inputs bit-identical", ["edit", "update"])
