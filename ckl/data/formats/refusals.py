"""Refusal sentences ("I don't know" answers) for the `idk` unlearning part, read from a
file of one sentence per line (a JSON string per line is accepted too), by default TOFU's
refusals, shipped with ckl (tofu_idontknow.jsonl beside this module; MIT, see
TOFU_LICENSE.md). Pretraining can add their
words to a word-level tokenizer (`pretrain: {refusals: true}`), so that a model trained
from scratch can learn to say them."""

from __future__ import annotations

import json
from pathlib import Path

from ckl.core.errors import InputError

DEFAULT_FILE = Path(__file__).resolve().parent / "tofu_idontknow.jsonl"


def read_refusals(path: Path) -> list[str]:
    """The refusal sentences of `path`, final full stop removed (the templates add one).

    Raises:
        InputError: the file is missing, unreadable, not UTF-8, has a bad JSON line or no sentence.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), None, "idk.file", "refusal file not found; give `idk: {file: PATH}` with one refusal sentence per line") from None
    except OSError as err:
        raise InputError(str(path), None, "idk.file", f"cannot read the refusal file: {err.strerror}") from None
    sentences = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InputError(str(path), number, None, "not valid UTF-8") from None
        if text.startswith('"'):
            try:
                text = json.loads(text)
            except json.JSONDecodeError as err:
                raise InputError(str(path), number, None, f"invalid JSON string ({err.msg})") from None
            if not isinstance(text, str):
                raise InputError(str(path), number, None, "expected a sentence")
            text = text.strip()
        text = text.rstrip(".").strip()
        if text:
            sentences.append(text)
    if not sentences:
        raise InputError(str(path), None, "idk.file", "no refusal sentences in the file")
    return sentences
