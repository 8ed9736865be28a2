"""Input-only tokens: new tokens whose embeddings live beside a frozen model (memory
tokens, soft prompts), shared by `cmt` (ckl.methods.retrieve.cmt) and `l2p`
(ckl.methods.scope.l2p).

A method adds the tokens to the tokenizer as special tokens (`tokenizer.add_tokens(...,
special_tokens=True)`: ckl.train.batching.pack never makes an added special token a
training target) and their embeddings to a `MemoryBank` attached to the model
(ckl.methods.scope.attached: left out of `save_pretrained`, kept in the method's state).
Hooks on the input embedding swap the bank's embeddings in at those tokens' ids, so the
tokens are read like soft prompts through the plain token path of every forward pass (the
packed scorer included), and the output layer, which knows only the model's own
vocabulary, never predicts one.
"""

from __future__ import annotations

import torch

from ckl.methods.scope.attached import attach, attached, host_model


class MemoryBank(torch.nn.Module):
    """Input-only tokens' embeddings, one parameter per `add`, and the token ids they
    stand for (ascending: the tokenizer gives added tokens increasing ids). Attached to
    the host model; its hooks swap the memory embeddings in for the memory ids."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.banks = torch.nn.ParameterList()
        self.register_buffer("ids", torch.zeros(0, dtype=torch.long))
        self.dim = dim
        self._ids: torch.Tensor | None = None  # the input ids of the forward pass under way

    def add(self, ids: list[int], init: torch.Tensor) -> None:
        self.banks.append(torch.nn.Parameter(init.clone()))
        self.ids = torch.cat([self.ids, torch.tensor(ids, dtype=torch.long, device=self.ids.device)])

    def before(self, module, args):
        """Forward pre-hook of the input embedding: memory ids become a valid id (0)."""
        ids = args[0]
        self._ids = ids
        if not len(self.ids):
            return None
        hit = torch.isin(ids, self.ids)
        return (ids.masked_fill(hit, 0), *args[1:]) if hit.any() else None

    def after(self, module, args, output):
        """Forward hook of the input embedding: the memory embeddings where memory ids were."""
        ids, self._ids = self._ids, None
        if ids is None or not len(self.ids):
            return output
        hit = torch.isin(ids, self.ids)
        if not hit.any():
            return output
        table = torch.cat(list(self.banks))  # (M, dim), in id order
        rows = torch.searchsorted(self.ids, ids[hit])
        out = output.clone()
        out[hit] = table[rows].to(out.dtype)
        return out


def bank_of(model, name: str) -> MemoryBank:
    """The bank attached to `model` under `name`, attached (empty, with its hooks) if none is."""
    bank = attached(model, name)
    if bank is None:
        weight = host_model(model).get_input_embeddings().weight
        bank = MemoryBank(weight.shape[1]).to(weight.device)
        attach(model, name, bank, lambda host: (host.get_input_embeddings().register_forward_pre_hook(bank.before),
                                                 host.get_input_embeddings().register_forward_hook(bank.after)))
    return bank
