"""Knowledge-Instruct: teach new facts as many instruction-style question-answer items
rather than as raw statements alone (Ovadia et al. 2025, "Knowledge-Instruct: Effective
Continual Pre-training from Limited Data using Instructions").

Each epoch, every fact the stage teaches also gets `items` question-answer lines, drawn
without repeats from all its relation's question forms (the world's instruction format,
"Question: ... Answer: ..."), whichever half of the world its subject is in. The stage's
statements are trained as usual beside them (`statements: false` trains the items alone,
the paper's setting).

What this does to the measures: ckl's extraction protocol (docs/knowledge.md) holds out
the questions of half the people, so that question accuracy on them measures knowledge
extracted from statements. This part trains those very questions on the stage's facts,
so its extraction-acquisition column is trained question answering, not extraction; the
held-out paraphrase templates stay untrained and are this part's measure of
generalisation (docs/methods.md says so beside its row).

Deviations: the paper has an LLM extract facts from documents and write diverse
instructions; here the facts come from the fact store and the instructions are its
relations' question forms (ckl generates no text with a model).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ckl.core.checks import ConfigError, check_count
from ckl.data.facts import Fact
from ckl.data.stream import qa_text
from ckl.methods.base import Part, StageContext, register_part


@dataclass
class KnowledgeInstructConfig:
    items: int = field(default=3, metadata={"help": "question-answer items per taught fact and epoch (at most its relation's question forms)"})
    statements: bool = field(default=True, metadata={"help": "also train the stage's statements (false: the items alone)"})

    def __post_init__(self) -> None:
        check_count(self.items, "items")
        if not isinstance(self.statements, bool):
            raise ConfigError("statements", f"statements must be true or false, got {self.statements!r}")


class KnowledgeInstruct(Part):
    name = "knowledge_instruct"

    def __init__(self, config: KnowledgeInstructConfig):
        self.config = config
        self.taught: list[Fact] = []  # this epoch's teaching facts

    def select_facts(self, facts: list[Fact], ctx: StageContext) -> list[Fact]:
        self.taught = list(facts)
        return facts if self.config.statements else []

    def extra_documents(self, ctx: StageContext, rng: random.Random) -> list[str]:
        docs = []
        for f in self.taught:
            forms = ctx.relations[f.relation].questions
            docs += [qa_text(f, q) for q in rng.sample(list(forms), min(self.config.items, len(forms)))]
        return docs


register_part("knowledge_instruct", KnowledgeInstructConfig, KnowledgeInstruct, "Knowledge-Instruct: teach the stage's facts as many question-answer items, every person's questions included (Ovadia et al. 2025)")
