"""Input-only tokens: new tokens whose embeddings live beside a frozen model (memory
tokens, soft prompts), shared by `cmt` (ckl.methods.retrieve.cmt), `l2p`, `fwd_prompt`
and `panda` (ckl.methods.scope); `PromptTokens` is the method shape of the three that
keep banks of tokens in front of every input.

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

import time
from dataclasses import dataclass, field, replace

import torch

from ckl.core.checks import check_count, check_number
from ckl.data.stream import Change, render_documents
from ckl.methods.base import ApplyStats, Method, StageContext
from ckl.methods.scope.attached import attach, attached, host_model, load_module_state, module_state
from ckl.model.lm import count_parameters
from ckl.train.loop import TrainConfig, rng_for, train


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


def vocabulary_rows(weight: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """The embeddings of `n` vocabulary tokens drawn at random (Lester et al.'s initialisation of soft prompts)."""
    rows = torch.randint(0, weight.shape[0], (n,), generator=generator)
    return weight[rows.to(weight.device)].float()


def add_tokens(model, tokenizer, name: str, names: list[str], init: torch.Tensor) -> MemoryBank:
    """`names` as new input-only tokens of `tokenizer` (special tokens: ckl.train.batching.pack
    never makes them targets) whose embeddings `init` become one new parameter of the bank
    attached to `model` under `name`."""
    tokenizer.add_tokens(names, special_tokens=True)
    bank = bank_of(model, name)
    bank.add(tokenizer.convert_tokens_to_ids(names), init)
    attach(model, name, bank, lambda host: None)  # the new parameter joins the keys left out of save_pretrained
    return bank


def reattach(model, name: str, sizes: list[int], tensors: dict[str, torch.Tensor], who: str) -> MemoryBank:
    """A bank of parameters of `sizes` rows loaded from `tensors` (`module_state` output)
    attached to a model loaded from a checkpoint, the model frozen.

    Raises:
        ValueError: the tensors do not fit (a damaged checkpoint), naming `who`.
    """
    weight = host_model(model).get_input_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(False)
    bank = bank_of(model, name)
    for rows in sizes:
        bank.banks.append(torch.nn.Parameter(torch.zeros(rows, weight.shape[1], device=weight.device), requires_grad=False))
    bank.ids = torch.zeros(sum(sizes), dtype=torch.long, device=weight.device)
    try:
        load_module_state(bank, tensors)
    except RuntimeError as err:
        raise ValueError(f"{who}: the saved tokens are damaged ({err}); discard the checkpoint and run again") from None
    attach(model, name, bank, lambda host: None)
    return bank


@dataclass
class PromptTokensConfig:
    tokens: int = field(default=16, metadata={"help": "input-only tokens in a bank (a stage's memory or prompt)"})
    epochs: int = field(default=40, metadata={"help": "passes over the stage's facts while the tokens train"})
    lr: float = field(default=1e-2, metadata={"help": "AdamW learning rate of the token embeddings"})
    batch_size: int = field(default=16, metadata={"help": "blocks per optimiser step"})
    keep: float = field(default=1.0, metadata={"help": "known (base) facts trained with the tokens in front, per new fact, each epoch: the tokens are read before every prompt, so they must leave what the model knows as it was (0 = none)"})

    def __post_init__(self) -> None:
        check_count(self.tokens, "tokens")
        check_count(self.epochs, "epochs")
        check_count(self.batch_size, "batch_size")
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.keep, "keep", low=0)


class PromptTokens(Method):
    """A frozen model read through banks of trained input-only tokens put in front of every
    training document and probe. Each stage may add a bank (`grows`), trains one
    (`trained_bank`), and puts some in front (`shown`); subclasses choose, and may add loss
    terms (`terms`) and act around the training (`before_training`, `after_training`).
    Forget requests are not applied (a bank of tokens cannot drop one fact)."""

    kinds = frozenset({"learn", "update", "edit"})
    module_name = ""  # the attached bank's name on the host model

    def __init__(self, config: PromptTokensConfig) -> None:
        self.config = config
        self.banks: list[list[str]] = []  # each bank's token strings, in order
        self.saved: dict | None = None  # loaded state, attached by `restore`
        self.bank: MemoryBank | None = None

    # ------------------------------------------------------------ what a subclass chooses
    def grows(self, stage: int) -> bool:
        """Whether `stage` adds a bank."""
        return True

    def init_bank(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A new bank's embeddings: those of vocabulary tokens drawn at random."""
        return vocabulary_rows(weight, self.config.tokens, generator)

    def shown(self) -> list[int]:
        """The banks put in front of inputs, in order."""
        return list(range(len(self.banks)))

    def trained_bank(self) -> int:
        return len(self.banks) - 1

    def terms(self, model, ctx: StageContext) -> list:
        return []

    def before_training(self, model, ctx: StageContext) -> None:
        return None

    def after_training(self, model, ctx: StageContext, documents) -> None:
        return None

    # ------------------------------------------------------------ the shared shape
    def prefix(self) -> str:
        return "".join(t for b in self.shown() for t in self.banks[b])

    def apply(self, model, change: Change, ctx: StageContext):
        start = time.perf_counter()
        stats = ApplyStats(not_applied={k: change.count(k) for k in change.kinds if k not in self.kinds})
        facts = [*change.learn, *(r.fact for r in (*change.update, *change.edit))]
        if facts:
            self.bank = bank_of(model, self.module_name)
            for p in model.parameters():
                p.requires_grad_(False)
            if self.grows(change.stage) or not self.banks:
                names = [f"<{self.name}{len(self.banks)}.{k}>" for k in range(self.config.tokens)]
                weight = host_model(model).get_input_embeddings().weight.detach()
                generator = torch.Generator().manual_seed(rng_for(ctx.seed, self.name, ctx.stage).randrange(2**31))
                add_tokens(model, ctx.tokenizer, self.module_name, names, self.init_bank(weight, generator))
                self.banks.append(names)
            trained = self.bank.banks[self.trained_bank()]
            trained.requires_grad_(True)
            prefix = self.prefix()
            changed = {f.id for f in facts} | {f.id for f in change.forget}
            known = [f for f in ctx.base if f.id not in changed]

            def documents(epoch: int) -> list[str]:
                rng = rng_for(ctx.seed, "docs", ctx.stage, epoch)
                kept = rng.sample(known, min(len(known), round(self.config.keep * len(facts))))
                return [prefix + " " + doc for doc in render_documents(facts + kept, ctx.relations, rng, qa_subjects=ctx.qa_subjects)]

            self.before_training(model, ctx)
            config = TrainConfig(epochs=self.config.epochs, lr=self.config.lr, batch_size=self.config.batch_size,
                                 block_size=128 + len(self.shown()) * self.config.tokens)
            result = train(model, ctx.tokenizer, documents, config, ctx.accelerator, terms=self.terms(model, ctx),
                           seed=rng_for(ctx.seed, "batches", ctx.stage).randrange(2**31), progress=ctx.progress)
            trained.requires_grad_(False)
            self.after_training(model, ctx, documents)
            stats.tokens_seen, stats.steps, stats.epochs = result.tokens_seen, result.steps, result.epochs
            stats.trainable_params = trained.numel()
        stats.total_params = count_parameters(model)[1]
        stats.seconds = time.perf_counter() - start
        return model, stats

    def transform_probes(self, probes):
        """Every probe with the shown banks in front of its prompt."""
        prefix = self.prefix() if self.banks else ""
        return [replace(p, prompt=f"{prefix} {p.prompt}") for p in probes] if prefix else list(probes)

    def kept_outside_weights(self) -> list[str]:
        return [self.name]

    def extra_state(self) -> dict:
        """What a subclass keeps beside the banks (tensors or JSON-able data)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        return None

    def state_dict(self) -> dict:
        if self.bank is None:
            return {self.name: self.saved or {"banks": []}}
        return {self.name: {"banks": self.banks, **self.extra_state(), **{f"w.{k}": v for k, v in module_state(self.bank).items()}}}

    def load_state_dict(self, state: dict) -> None:
        state = state.get(self.name, {})
        banks = state.get("banks", [])
        if not isinstance(banks, list) or not all(isinstance(b, list) and all(isinstance(t, str) for t in b) for b in banks):
            raise ValueError(f"{self.name}: the saved tokens are damaged (their list has the wrong types); discard the checkpoint and run again")
        self.banks = [list(b) for b in banks]
        self.saved = state
        self.load_extra_state(state)

    def restore(self, model):
        """Re-attach the saved banks to a model loaded from a checkpoint."""
        if not self.saved or not self.banks:
            self.saved = None
            return model
        tensors = {k[2:]: v for k, v in self.saved.items() if k.startswith("w.")}
        self.bank = reattach(model, self.module_name, [self.config.tokens] * len(self.banks), tensors, self.name)
        self.saved = None
        return model
