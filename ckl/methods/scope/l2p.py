"""L2P: a pool of prompts shared by every stage, chosen per input by matching a query of
the frozen model against learned keys; the model's own weights never change (Wang et
al. 2022, "Learning to Prompt for Continual Learning").

The pool holds `pool` prompts of `length` input-only tokens each (`<l2p i.j>`;
ckl.methods.scope._tokens: their embeddings live beside the model, the saved model
directory stays the plain base model) and one key per prompt. An input's query is the
frozen model's last hidden state averaged over the input's tokens (the paper's
[CLS] feature of a frozen pretrained encoder); the `top` prompts whose keys are most
cosine-similar to it are put in front of the input, in pool order. Training: each
epoch, every fact of the stage is one statement (a template drawn at random) and, where
its subject's questions are trained, one question-answer line; each is matched by its
prompt (the text before the answer, what a probe of it shows) and gets its prompts in
front, the prompts' embeddings train by next-token loss on it (the model frozen), and
each selected key is pulled toward its documents' queries (the paper's surrogate loss
1 - cos(q, k), one normalised gradient step of `key_lr` per epoch). Evaluation: every
probe is matched the same way and asked with its prompts in front.

Deviations: text-only LM (the query is the model's mean last hidden state over the
input, not a ViT [CLS] token); keys are updated once per epoch from that epoch's queries
instead of by the LM optimiser each step (the packed blocks mix documents, so a block has
no single query); no batch-wise frequency penalty for prompt diversity. Forget requests
are not applied. The selection needs the frozen model at evaluation time, so the method
keeps a reference to it (the weights never change, so it is the model of every row).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from ckl.core.checks import ConfigError, check_count, check_number
from ckl.data.stream import QUESTION_FORMAT, Change, asks
from ckl.methods.base import ApplyStats, Method, StageContext, register_method
from ckl.methods.scope._tokens import MemoryBank, add_tokens, reattach, vocabulary_rows
from ckl.methods.scope.attached import host_model, module_state
from ckl.model.lm import count_parameters
from ckl.train.loop import TrainConfig, rng_for, train

NAME = "l2p_pool"


@dataclass
class L2pConfig:
    pool: int = field(default=10, metadata={"help": "prompts in the pool, shared by every stage"})
    length: int = field(default=5, metadata={"help": "tokens per prompt"})
    top: int = field(default=3, metadata={"help": "prompts chosen per input (their keys most similar to its query)"})
    epochs: int = field(default=40, metadata={"help": "passes over the stage's facts"})
    lr: float = field(default=3e-2, metadata={"help": "AdamW learning rate of the prompt embeddings"})
    key_lr: float = field(default=0.5, metadata={"help": "step of each selected key toward its inputs' queries, per epoch"})
    batch_size: int = field(default=16, metadata={"help": "blocks per optimiser step"})

    def __post_init__(self) -> None:
        for name in ("pool", "length", "top", "epochs", "batch_size"):
            check_count(getattr(self, name), name)
        if self.top > self.pool:
            raise ConfigError("top", f"top ({self.top}) must not exceed pool ({self.pool})")
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.key_lr, "key_lr", low=0)


def sentences(facts, relations, qa_subjects, rng) -> list[tuple[str, str]]:
    """This epoch's training sentences of `facts` as (prompt, answer): a statement with a
    template drawn at random, and a question-answer line where the subject's questions are
    trained. Matched by their prompt, as a probe is matched by its own: the document's
    query must be the query its probes will have."""
    out = []
    for f in facts:
        rel = relations[f.relation]
        out.append((rng.choice(rel.templates).format(subject=f.subject), f.object))
        if rel.questions and asks(f.subject, qa_subjects):
            out.append((QUESTION_FORMAT.format(question=rng.choice(rel.questions).format(subject=f.subject)), f.object))
    return out


@torch.no_grad()
def queries(model, tokenizer, texts: list[str], batch: int = 64) -> torch.Tensor:
    """The frozen model's mean last hidden state over each text's tokens, (N, d), unit norm."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        mask = enc["attention_mask"].to(device)
        hidden = model(input_ids=enc["input_ids"].to(device), attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()
        out.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
    model.train(was)
    return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()


class L2p(Method):
    name = "l2p"
    kinds = frozenset({"learn", "update", "edit"})

    def __init__(self, config: L2pConfig) -> None:
        self.config = config
        self.tokens: list[list[str]] = []  # the pool's prompts, as token strings
        self.keys: torch.Tensor | None = None  # (pool, d), unit norm
        self.model = None  # the frozen model, for matching probes
        self.tokenizer = None
        self.bank: MemoryBank | None = None
        self.saved: dict | None = None
        self.usage: list[int] = []  # how often each prompt was chosen for the last stage's documents

    def select(self, q: torch.Tensor) -> torch.Tensor:
        """(N, top) indices of the chosen prompts, in pool order."""
        return (q @ self.keys.T).topk(self.config.top, dim=-1).indices.sort(dim=-1).values

    def _prefix(self, chosen) -> str:
        return "".join(t for i in chosen.tolist() for t in self.tokens[i])

    def _build(self, model, tokenizer, seed: int) -> None:
        """The pool's tokens, embeddings (from random vocabulary rows) and keys (random unit vectors)."""
        c = self.config
        self.tokens = [[f"<l2p{i}.{j}>" for j in range(c.length)] for i in range(c.pool)]
        names = [t for prompt in self.tokens for t in prompt]
        weight = host_model(model).get_input_embeddings().weight.detach()
        generator = torch.Generator().manual_seed(seed)
        self.bank = add_tokens(model, tokenizer, NAME, names, vocabulary_rows(weight, len(names), generator))
        self.keys = torch.nn.functional.normalize(torch.randn(c.pool, weight.shape[1], generator=generator), dim=-1)

    def apply(self, model, change: Change, ctx: StageContext):
        start = time.perf_counter()
        stats = ApplyStats(not_applied={k: change.count(k) for k in change.kinds if k not in self.kinds})
        facts = [*change.learn, *(r.fact for r in (*change.update, *change.edit))]
        self.model, self.tokenizer = model, ctx.tokenizer
        if self.bank is None:
            for p in model.parameters():
                p.requires_grad_(False)
            self._build(model, ctx.tokenizer, rng_for(ctx.seed, "l2p").randrange(2**31))
        if facts:
            self.bank.banks[0].requires_grad_(True)

            def documents(epoch: int) -> list[str]:
                rng = rng_for(ctx.seed, "docs", ctx.stage, epoch)
                pairs = sentences(facts, ctx.relations, ctx.qa_subjects, rng)
                q = queries(model, ctx.tokenizer, [prompt for prompt, _ in pairs])
                chosen = self.select(q)
                self._pull_keys(q, chosen)
                self.usage = torch.bincount(chosen.flatten(), minlength=self.config.pool).tolist()
                return [f"{self._prefix(c)} {prompt} {answer}." for c, (prompt, answer) in zip(chosen, pairs)]

            config = TrainConfig(epochs=self.config.epochs, lr=self.config.lr, batch_size=self.config.batch_size,
                                 block_size=128 + self.config.top * self.config.length)
            result = train(model, ctx.tokenizer, documents, config, ctx.accelerator,
                           seed=rng_for(ctx.seed, "batches", ctx.stage).randrange(2**31), progress=ctx.progress)
            self.bank.banks[0].requires_grad_(False)
            stats.tokens_seen, stats.steps, stats.epochs = result.tokens_seen, result.steps, result.epochs
            stats.trainable_params = self.config.pool * (self.config.length + 1) * self.bank.dim
        stats.total_params = count_parameters(model)[1]
        stats.seconds = time.perf_counter() - start
        return model, stats

    def _pull_keys(self, q: torch.Tensor, chosen: torch.Tensor) -> None:
        """One step of the surrogate loss: each chosen key moves toward its inputs' mean query."""
        for i in chosen.unique().tolist():
            mean = q[(chosen == i).any(dim=-1)].mean(0)
            self.keys[i] = torch.nn.functional.normalize(self.keys[i] + self.config.key_lr * mean, dim=0)

    def transform_probes(self, probes):
        """Every probe with its chosen prompts in front (matched by its own prompt's query)."""
        if self.bank is None or not probes:
            return list(probes)
        chosen = self.select(queries(self.model, self.tokenizer, [p.prompt for p in probes]))
        return [replace(p, prompt=f"{self._prefix(c)} {p.prompt}") for p, c in zip(probes, chosen)]

    def use_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def row_notes(self) -> dict:
        return {"l2p_usage": self.usage} if self.usage else {}

    def kept_outside_weights(self) -> list[str]:
        return [self.name]

    def state_dict(self) -> dict:
        if self.bank is None:
            return {"l2p": self.saved or {}}
        return {"l2p": {"tokens": self.tokens, "keys": self.keys.clone(), **{f"w.{k}": v for k, v in module_state(self.bank).items()}}}

    def load_state_dict(self, state: dict) -> None:
        state = state.get("l2p", {})
        if not state:
            return
        tokens = state.get("tokens")
        c = self.config
        if not (isinstance(tokens, list) and len(tokens) == c.pool and all(isinstance(t, list) and len(t) == c.length for t in tokens)
                and isinstance(state.get("keys"), torch.Tensor) and tuple(state["keys"].shape)[0] == c.pool):
            raise ValueError("l2p: the saved pool is damaged (its prompts or keys do not match pool and length); discard the checkpoint and run again")
        self.saved = state

    def restore(self, model):
        """Re-attach the saved pool to a model loaded from a checkpoint."""
        if not self.saved:
            return model
        state, self.saved = self.saved, None
        self.tokens, self.keys = state["tokens"], state["keys"].clone()
        tensors = {k[2:]: v for k, v in state.items() if k.startswith("w.")}
        self.bank, self.model = reattach(model, NAME, [self.config.pool * self.config.length], tensors, self.name), model
        return model


register_method("l2p", L2pConfig, L2p, "L2P: a pool of soft prompts (input-only tokens) shared by every stage, chosen per input by matching the frozen model's query against learned keys; no weight change", ["learn", "update", "edit"])
