"""Text targets as facts: a prompt and the text that must (or must no longer) follow it.

Memorised text (the Pile extraction targets) and free-form answers (KnowUnDo) are not
subject-relation-object facts, but they fit the same store without new machinery: the
fact's subject is the prompt, its relation is `text` whose only template is
"{subject}", and its object is the continuation. Training text is then
"prompt continuation." (ckl.data.stream.statement adds the final period, which is why importers
end continuations on a letter or digit: `trim_end`), the statement probe's
prompt is the prompt and its answer the continuation, and greedy exact match asks for
the whole continuation. A `text` relation has no candidates, so candidate ranking is
trivially right for it: read `em`, and the extraction metrics (EL, MA), not `rank`.
"""

from __future__ import annotations

from ckl.data.facts import Fact, Relation

TEXT = "text"
TEXT_RELATION = Relation(TEXT, templates=("{subject}",))


def text_fact(fid: str, prompt: str, continuation: str) -> Fact:
    """A text target: `prompt` followed by `continuation` (neither may be empty)."""
    if not prompt.strip() or not continuation.strip():
        raise ValueError(f"text target {fid!r} needs a non-empty prompt and continuation")
    return Fact(fid, prompt.strip(), TEXT, continuation.strip())


def trim_end(text: str) -> str:
    """Drop trailing punctuation and spaces (when a letter or digit remains).

    The training renderer ends every statement with "."; a word-level or BPE tokenizer
    merges that period with punctuation before it ("in)." is "in" + ")."), so an answer
    ending in punctuation would never be produced token for token. Ending answers on a
    letter or digit keeps the rendered period a token of its own.
    """
    text = text.strip()
    end = len(text)
    while end and not text[end - 1].isalnum():
        end -= 1
    return text[:end] if end else text
