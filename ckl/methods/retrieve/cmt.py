"""Compressed memory tokens (CMT): each stage's new knowledge is compressed into a few
memory tokens that the frozen model reads in front of every prompt; none of the model's
own weights ever changes.

The issue names the idea ("compress new knowledge into a memory bank read by the frozen
model, one memory token set per stage"); its nearest published forms are prompt tuning
(Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning": soft
token embeddings trained in front of a frozen model) and the memory of amortized
contexts of Tack et al. 2024 ("Online Adaptation of Language Models with a Memory of
Amortized Contexts", MAC: each document compressed into tokens a frozen model reads).
Here stage j adds `tokens` new input-only tokens (`<cmt b.k>`, b counting the banks from 0) to the tokenizer and
trains only their embeddings, by next-token loss on the stage's facts rendered as
training text with the whole memory so far in front (the earlier stages' tokens read but
frozen); every probe is then asked with the whole memory in front of its prompt. The
embeddings live in a module attached beside the model (ckl.methods.scope.attached): a
hook on the input embedding reads them for the memory tokens' ids, so the output layer
never predicts a memory token and the saved model directory stays the plain base model
(the memory is checkpointed in the method's state, and `ckl update` refuses it).

Each epoch also trains, with the memory in front, `keep` known (base) facts per new one:
the memory is read before every prompt, so it must leave what the model knows as it was
(without them, on a tiny two-hop test world at 100 epochs and lr 0.03, K0 statements fall from 0.95 to 0.11 behind the
memory; with them 0.74).

Deviations from MAC: no amortization network that encodes a document into tokens in one
pass and no aggregation across documents; the memory of a stage is fitted by gradient
descent on the stage's text, and stages' memories are concatenated, not aggregated.
Forget requests are not applied (a memory token set cannot drop one fact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckl.methods.base import register_method
from ckl.methods.scope._tokens import PromptTokens, PromptTokensConfig


@dataclass
class CmtConfig(PromptTokensConfig):
    tokens: int = field(default=16, metadata={"help": "memory tokens each stage adds (its knowledge is compressed into their embeddings)"})


class Cmt(PromptTokens):
    """Every stage adds a bank (its memory) and trains it; every bank so far is shown."""

    name = "cmt"
    module_name = "cmt_memory"

    def __init__(self, config: CmtConfig) -> None:
        super().__init__(config)


register_method("cmt", CmtConfig, Cmt, "compressed memory tokens: each stage's facts compressed into a few new input-only tokens the frozen model reads before every prompt (prompt tuning per stage); no weight change", ["learn", "update", "edit"])
