""""I don't know" targets: train the forget facts' prompts to answer with a refusal
instead of the fact (the "IDK" / preference-optimisation baseline of Maini et al. 2024,
"TOFU: A Task of Fictitious Unlearning for LLMs", with TOFU's own refusal sentences,
shipped with ckl, by default: ckl/data/formats/tofu_idontknow.jsonl, MIT).

Each forget fact is rendered with the training templates with its object replaced by a
refusal (chosen per fact, deterministically), and the part minimises the next-token loss
of that text; retain_weight (default 1, as in TOFU) adds the next-token loss on retained
facts. Positive training only: nothing is pushed down directly, the refusal displaces
the answer. Like every method that changes answers rather than weights it only hides
knowledge: the relearning attack in the unlearning metrics shows how much comes back.

The refusal file holds one sentence per line (a JSON string per line is accepted too).
Sentences with words the model's tokenizer does not know would teach it to emit unknown
tokens: they are left out, and if none is left a warning says so and all are used (the
tiny word-level default model knows none of TOFU's refusals; give `file:` with refusals
in its vocabulary for that model).

Deviations: TOFU pairs a forget question with a refusal; here the statement templates
get one too ("Ada was born in I don't know"), since the model is probed with both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ckl.core.checks import ConfigError
from ckl.data.facts import Fact
from ckl.methods.base import StageContext, register_part
from ckl.data.formats.refusals import DEFAULT_FILE, read_refusals
from ckl.methods.unlearn.part import UnlearnConfig, Unlearning, substitute
from ckl.data.stream import stable_hash



@dataclass
class IdkConfig(UnlearnConfig):
    file: str | None = field(default=None, metadata={"help": "refusal sentences, one per line (null = TOFU's refusals, shipped with ckl)"})
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the next-token loss on the retain set"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.file is not None and (not isinstance(self.file, str) or not self.file.strip()):
            raise ConfigError("file", f"file must be a path, got {self.file!r}")
        if self.file is not None and not Path(self.file).is_file():  # caught with the config, before any work
            raise ConfigError("file", f"file {self.file!r} not found (one refusal sentence per line)")


def expressible(sentences: list[str], tokenizer) -> list[str]:
    """The sentences the tokenizer writes without its unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return sentences
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    return [s for s, ids in zip(sentences, encoded) if unk not in ids]


class IdontKnow(Unlearning):
    name = "idk"

    def __init__(self, config: IdkConfig):
        super().__init__(config)
        self.refusals: list[str] | None = None

    def targets(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        if self.refusals is None:
            path = Path(self.config.file) if self.config.file is not None else DEFAULT_FILE
            sentences = read_refusals(path)
            usable = expressible(sentences, ctx.tokenizer)
            if not usable:
                warnings.warn(f"idk: the tokenizer has unknown words in every refusal of {path}; training on them anyway (the model will answer with unknown tokens)", stacklevel=2)
                usable = sentences
            self.refusals = usable
        chosen = [self.refusals[stable_hash("idk", f.id) % len(self.refusals)] for f in facts]
        return substitute(facts, chosen)

    def objective(self, model, batch: dict) -> torch.Tensor:
        return model(**batch).loss


register_part("idk", IdkConfig, IdontKnow, "answer forgotten facts' prompts with an \"I don't know\" refusal (TOFU's IDK targets)", kinds=("forget",))
