"""Tokenised prompt batches that know where each subject ends.

An editor reads and writes a subject's representation at the subject's *last token*
(Meng et al. 2022), so every row records that position. A row is
`prefix + template(subject) [+ " " + target]`; the parts are tokenised separately and
concatenated (as `ckl.model.scoring` does for prompt and answer), so the subject's
last token is exactly the end of the tokenised head, whatever the tokenizer. Rows are
right-padded; causal attention means nothing a row computes at a position depends on
what follows it, so keys at the subject are the same with or without the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ckl.core.checks import ConfigError
from ckl.data.facts import Relation
from ckl.data.stream import QUESTION_FORMAT


@dataclass(frozen=True)
class Row:
    """One prompt: `prefix` (context text, may be empty), a template with "{subject}",
    the subject, the answer to teach (None for a prompt without one), and the index of
    the edit (group) the row belongs to."""

    prefix: str
    template: str
    subject: str
    target: str | None
    group: int


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    subject_pos: torch.Tensor  # (B,) the subject's last token
    last_pos: torch.Tensor  # (B,) the prompt's last token (it predicts the first target token)
    target_ids: torch.Tensor  # (B, S) target tokens, 0 where masked
    target_mask: torch.Tensor  # (B, S) True for real target tokens
    group: torch.Tensor  # (B,) edit index of each row
    n_groups: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> PromptBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PromptBatch(**moved)

    def select(self, rows: torch.Tensor) -> PromptBatch:
        """The rows `rows` (a 1-D index tensor), trimmed of all-padding columns."""
        width = int(self.attention_mask[rows].sum(1).max())
        return PromptBatch(
            self.input_ids[rows, :width], self.attention_mask[rows, :width], self.subject_pos[rows],
            self.last_pos[rows], self.target_ids[rows], self.target_mask[rows], self.group[rows], self.n_groups,
        )

    def first_rows(self) -> torch.Tensor:
        """(n_groups,) the first row of each group (its bare prompt, by construction)."""
        first = torch.full((self.n_groups,), len(self), dtype=torch.long, device=self.group.device)
        return first.scatter_reduce(0, self.group, torch.arange(len(self), device=self.group.device), "amin")


SUBJECT_TOKENS = ("last", "first")


def encode(tokenizer, rows: Sequence[Row], subject_token: str = "last") -> PromptBatch:
    """Tokenise `rows` into one right-padded batch (a few batched tokenizer calls).

    `subject_pos` is the subject's last token (the paper's choice), or its first with
    `subject_token="first"`: small models trained from scratch may key a person on the
    first name (`ckl locate` shows which).
    """
    if subject_token not in SUBJECT_TOKENS:
        raise ConfigError("subject_token", f"subject_token must be one of {SUBJECT_TOKENS}, got {subject_token!r}")
    heads, tails, targets, befores = [], [], [], []
    for r in rows:
        before, after = r.template.split("{subject}", 1)
        head = before + r.subject
        heads.append(f"{r.prefix} {head}" if r.prefix else head)
        befores.append(f"{r.prefix} {before}".strip() if r.prefix else before.strip())
        tails.append(after.format(subject=r.subject))
        targets.append(" " + r.target if r.target is not None else "")
    tok = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    head_ids, tail_ids = tok(heads), tok(tails)
    target_ids = tok([t or " " for t in targets])
    target_ids = [ids if t else [] for ids, t in zip(target_ids, targets)]
    seqs = [h + t + g for h, t, g in zip(head_ids, tail_ids, target_ids)]
    width = max(len(s) for s in seqs)
    width_t = max(1, max(len(g) for g in target_ids))
    B = len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((B, width), pad, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    tgt = torch.zeros((B, width_t), dtype=torch.long)
    tmask = torch.zeros((B, width_t), dtype=torch.bool)
    for i, (s, g) in enumerate(zip(seqs, target_ids)):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        tgt[i, : len(g)] = torch.tensor(g, dtype=torch.long)
        tmask[i, : len(g)] = True
    if subject_token == "last":
        subject_pos = torch.tensor([len(h) - 1 for h in head_ids])
    else:
        subject_pos = torch.tensor([len(b) if text else 0 for b, text in zip(tok([b or " " for b in befores]), befores)])
    last_pos = torch.tensor([len(h) + len(t) - 1 for h, t in zip(head_ids, tail_ids)])
    group = torch.tensor([r.group for r in rows])
    return PromptBatch(input_ids, mask, subject_pos, last_pos, tgt, tmask, group, int(group.max()) + 1 if B else 0)


def relation_prompts(relation: Relation) -> list[str]:
    """Every training form of a relation: its statement templates and its questions (in
    the probes' question format). Held-out paraphrases are never used for editing."""
    questions = [QUESTION_FORMAT.format(question=q) for q in relation.questions]
    return list(relation.templates) + questions


def rewrite_rows(subject: str, relation: Relation, target: str | None, prefixes: Sequence[str], group: int) -> list[Row]:
    """The rows that teach (subject, relation) -> target: the bare first template, then one
    row per context prefix, cycling through the relation's templates and questions."""
    forms = relation_prompts(relation)
    contexts = [""] + list(prefixes)
    return [Row(ctx, forms[i % len(forms)], subject, target, group) for i, ctx in enumerate(contexts)]


def concat(a: PromptBatch, b: PromptBatch) -> PromptBatch:
    """The rows of `a` then those of `b` in one batch (padded to the wider; groups kept)."""
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])
    width_t = max(a.target_ids.shape[1], b.target_ids.shape[1])
    pad = lambda x, w, value=0: torch.nn.functional.pad(x, (0, w - x.shape[1]), value=value)
    return PromptBatch(
        torch.cat([pad(a.input_ids, width), pad(b.input_ids, width)]),  # padding is masked: any id will do
        torch.cat([pad(a.attention_mask, width), pad(b.attention_mask, width)]),
        torch.cat([a.subject_pos, b.subject_pos]), torch.cat([a.last_pos, b.last_pos]),
        torch.cat([pad(a.target_ids, width_t), pad(b.target_ids, width_t)]),
        torch.cat([pad(a.target_mask, width_t, False), pad(b.target_mask, width_t, False)]),
        torch.cat([a.group, b.group]), max(a.n_groups, b.n_groups),
    )
