"""IKE: in-context knowledge editing (Zheng et al. 2023, "Can We Edit Factual Knowledge by
In-Context Learning?").

No weight changes. Every taught fact (edit, update, or new fact) becomes a demonstration
"New fact: <prompt> <object>." (`ckl.data.copy_mix.demonstration`); at evaluation each probe's
prompt is prefixed with its `k` most similar demonstrations, retrieved by cosine
similarity of bag-of-words vectors (one matrix product for all probes), the most similar
nearest the question. A later demonstration for the same fact replaces the earlier one.

The runner calls `transform_probes` before scoring every row, so the batched scorer
stays the scoring path. A tiny model trained from scratch only uses such context if its
pretraining taught it to (`PretrainConfig.copy_fraction`, ckl.data.copy_mix).

Deviations: the paper retrieves demonstrations with a sentence encoder and also shows
"copy", "update" and "retain" example demonstrations built from other facts; here
retrieval is lexical and the copy/retain behaviour comes from the copy mix in pretraining.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from ckl.core.checks import ConfigError
from ckl.data.copy_mix import demonstration
from ckl.data.facts import Fact, Probe
from ckl.methods.base import ApplyStats, Method, StageContext, register_method
from ckl.data.stream import Change

_WORD = re.compile(r"\w+")


@dataclass
class IKEConfig:
    k: int = field(default=1, metadata={"help": "demonstrations shown before each prompt"})
    min_similarity: float = field(default=0.0, metadata={"help": "show only demonstrations with at least this cosine similarity to the prompt"})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError("k", f"k must be >= 1, got {self.k!r}")
        if not 0 <= self.min_similarity <= 1:
            raise ConfigError("min_similarity", f"min_similarity must be in [0, 1], got {self.min_similarity!r}")


def bag_of_words(texts: Sequence[str], vocab: dict[str, int]) -> torch.Tensor:
    """(len(texts), len(vocab)) L2-normalised word counts (lower-cased; unknown words dropped)."""
    rows, cols = [], []
    for i, text in enumerate(texts):
        for w in _WORD.findall(text.lower()):
            if w in vocab:
                rows.append(i)
                cols.append(vocab[w])
    m = torch.zeros(len(texts), max(1, len(vocab)))
    if rows:
        m.index_put_((torch.tensor(rows), torch.tensor(cols)), torch.ones(len(rows)), accumulate=True)
    return torch.nn.functional.normalize(m, dim=1)


class IKE(Method):
    name = "ike"
    kinds = frozenset({"learn", "update", "edit"})

    def __init__(self, config: IKEConfig) -> None:
        self.config = config
        self.demos: dict[str, tuple[str, str]] = {}  # fact id -> (prompt, object)

    def apply(self, model, change: Change, ctx: StageContext):
        start = time.perf_counter()
        facts: list[Fact] = list(change.learn) + [r.fact for r in change.update + change.edit]
        for f in facts:
            self.demos.pop(f.id, None)  # re-inserted last: the newest demonstration wins
            self.demos[f.id] = (ctx.relations[f.relation].templates[0].format(subject=f.subject), f.object)
        stats = ApplyStats(not_applied={k: change.count(k) for k in change.kinds if k not in self.kinds})
        stats.total_params = sum(p.numel() for p in model.parameters())
        stats.seconds = time.perf_counter() - start
        return model, stats

    def transform_probes(self, probes: Sequence[Probe]) -> list[Probe]:
        """The probes with their retrieved demonstrations in front of the prompt."""
        if not self.demos or not probes:
            return list(probes)
        prompts = [p for p, _ in self.demos.values()]
        texts = [demonstration(p, o) for p, o in self.demos.values()]
        vocab: dict[str, int] = {}
        for text in prompts:
            for w in _WORD.findall(text.lower()):
                vocab.setdefault(w, len(vocab))
        k = min(self.config.k, len(texts))
        demo_vecs = bag_of_words(prompts, vocab)
        out = []
        for start in range(0, len(probes), 1024):
            chunk = probes[start : start + 1024]
            sim = bag_of_words([p.prompt for p in chunk], vocab) @ demo_vecs.T
            best, index = sim.topk(k, dim=1)  # most similar first
            for p, b, idx in zip(chunk, best.tolist(), index.tolist()):
                shown = [texts[i] for s, i in zip(b, idx) if s > 0 and s >= self.config.min_similarity]
                prefix = " ".join(reversed(shown))  # the most similar right before the question
                out.append(replace(p, prompt=f"{prefix} {p.prompt}") if prefix else p)
        return out

    def kept_outside_weights(self) -> list[str]:
        return [self.name]  # the knowledge is in the prompt's demonstrations

    def state_dict(self) -> dict:
        return {"ike": {"demos": [[fid, p, o] for fid, (p, o) in self.demos.items()]}}

    def load_state_dict(self, state: dict) -> None:
        self.demos = {fid: (p, o) for fid, p, o in state.get("ike", {}).get("demos", [])}


register_method("ike", IKEConfig, IKE, "in-context editing: new facts shown as retrieved demonstrations in the prompt (Zheng et al. 2023); no weight change", ["learn", "update", "edit"])
