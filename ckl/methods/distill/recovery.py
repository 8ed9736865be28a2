"""Recovery distillation: train on text the stage-start model generates itself (the
"recovery KD" of Geng et al. 2024, "TransLLM: A Framework for Transferring LLMs to Other
Languages", which recovers the original model's knowledge by fine-tuning on its own
responses instead of on gold data).

A data part. At `prepare`, before training, the stage-start model completes prompts
about the knowledge it holds: a statement template of a known fact's relation with the
fact's subject ("Ada Quill was born in"), greedily, until a stop token ("." or EOS) or
`max_new_tokens`. Each prompt with its completion ("Ada Quill was born in Port Elmira .")
becomes a training document, mixed into every epoch of the stage beside the stage's own
facts (`Part.extra_documents`). The targets are the model's own predictions, not stored
answers, so no earlier data is kept: only which (subject, relation) pairs the model is
meant to know.

Which facts: the base knowledge and every fact taught since (tracked in `observe`;
forgotten facts dropped), minus the facts the current stage learns, updates, edits or
forgets (their old completion is what the stage must change). `samples` of them are drawn
per stage (deterministically from the seed), each with a random training template.

Deviations: TransLLM distils chat responses to instructions, generated once before
transfer; here the prompts are the facts' statement templates and the text is generated
anew at every stage by the model as it starts the stage (so a later stage also recovers
what earlier stages taught). Generation is greedy and batched (prompts of equal token
length together, no padding); under data parallelism every process generates the same
text (same weights, greedy), and the loop shards the documents.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ckl.core.checks import check_count
from ckl.model.scoring import stop_token_mask
from ckl.data.facts import Fact, fact_row
from ckl.methods.base import Part, StageContext, register_part
from ckl.data.stream import Change
from ckl.train.loop import rng_for


@dataclass
class RecoveryConfig:
    samples: int = field(default=256, metadata={"help": "prompts the stage-start model completes per stage (each a training document every epoch)"})
    max_new_tokens: int = field(default=8, metadata={"help": "longest completion in tokens (it stops earlier at '.' or EOS)"})
    batch_size: int = field(default=64, metadata={"help": "prompts per generation batch"})

    def __post_init__(self) -> None:
        for name in ("samples", "max_new_tokens", "batch_size"):
            check_count(getattr(self, name), name)


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Each prompt's greedy continuation token ids, cut after the first stop token (a
    stop that is EOS is dropped). Batched: prompts of the same token length go together,
    so no padding is needed.

    Returns:
        The continuations, in the order of `prompts`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    head = model.get_output_embeddings()
    stops = stop_token_mask(tokenizer, int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)).to(device)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), batch_size):
                rows = group[start : start + batch_size]
                ids = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)  # (B, P)
                done = torch.zeros(len(rows), dtype=torch.bool, device=device)
                generated = []
                for _ in range(max_new_tokens):
                    logits = model(input_ids=ids, use_cache=False).logits[:, -1]  # (B, V)
                    token = logits.argmax(-1)  # (B,)
                    generated.append(token)
                    done |= stops[token]
                    if bool(done.all()):
                        break
                    ids = torch.cat([ids, token[:, None]], dim=1)
                tokens = torch.stack(generated, dim=1).tolist()  # (B, N)
                for row, seq in zip(rows, tokens):
                    out[row] = _cut(seq, stops, tokenizer.eos_token_id)
    finally:
        model.train(was_training)
    return out


def _cut(seq: list[int], stops: torch.Tensor, eos: int | None) -> list[int]:
    for k, token in enumerate(seq):
        if bool(stops[token]):
            return seq[:k] if token == eos else seq[: k + 1]
    return seq


class Recovery(Part):
    name = "recovery"

    def __init__(self, config: RecoveryConfig):
        self.config = config
        self.known: dict[str, Fact] | None = None  # facts the model is meant to know (their subjects and relations)
        self.documents: list[str] = []

    def _known(self, ctx: StageContext) -> dict[str, Fact]:
        if self.known is None:
            self.known = {f.id: f for f in ctx.base}
        return self.known

    def prompts(self, ctx: StageContext) -> list[str]:
        """This stage's prompts: statement templates of a sample of the known facts."""
        busy = ctx.change.touched() if ctx.change else set()
        pool = [f for f in self._known(ctx).values() if f.id not in busy and ctx.relations[f.relation].templates]
        rng = rng_for(ctx.seed, "recovery", ctx.stage)
        chosen = rng.sample(pool, min(self.config.samples, len(pool)))
        return [rng.choice(ctx.relations[f.relation].templates).format(subject=f.subject) for f in chosen]

    def prepare(self, model, ctx: StageContext):
        prompts = self.prompts(ctx)
        completions = greedy_completions(model, ctx.tokenizer, prompts, self.config.max_new_tokens, self.config.batch_size)
        stops = stop_token_mask(ctx.tokenizer, len(ctx.tokenizer))
        self.documents = []
        for prompt, completion in zip(prompts, completions):
            if not any(t < len(stops) and not bool(stops[t]) for t in completion):
                continue  # the model stops at once: nothing to recover
            prompt_ids = ctx.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            self.documents.append(ctx.tokenizer.decode(prompt_ids + completion, clean_up_tokenization_spaces=False))
        return model

    def extra_documents(self, ctx: StageContext, rng: random.Random) -> list[str]:
        return list(self.documents)

    def finish(self, model, ctx: StageContext):
        self.documents = []
        return model

    def observe(self, model, change: Change, ctx: StageContext) -> None:
        known = self._known(ctx)
        for fact in change.taught():
            known[fact.id] = fact
        for fact in change.forget:
            known.pop(fact.id, None)

    def state_dict(self) -> dict:
        return {} if self.known is None else {"known": [fact_row(f) for f in self.known.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.known = {row["id"]: Fact(**row) for row in state["known"]} if state else None


register_part("recovery", RecoveryConfig, Recovery, "recovery distillation: train on completions the stage-start model generates for prompts about what it knows")
