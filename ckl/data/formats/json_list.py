"""Reading a JSON file that holds one list of records, with the line of every record.

Benchmark files (KnowUnDo, CounterFact, zsRE) are single JSON lists, not JSON lines. To
name the line of a malformed record, the list is decoded element by element with
`json.JSONDecoder.raw_decode`, keeping each element's character offset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckl.core.errors import InputError
from ckl.data.facts import MAX_TEXT_CHARS

_WS = " \t\n\r"


def iter_json_list(path: str | Path) -> Iterator[tuple[int, int, Any]]:
    """Yield (record number from 1, line number, record) for each element of the list.

    Raises:
        InputError: the file is missing, not UTF-8, not valid JSON, or not a list.
    """
    path = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(path, None, None, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, None, None, "not valid UTF-8") from None
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in _WS:
            i += 1
        return i

    counted = [0, 1]  # (offset, line at offset): records come in order, so count onward

    def line_of(i: int) -> int:
        if i < counted[0]:
            return text.count("\n", 0, i) + 1
        counted[:] = [i, counted[1] + text.count("\n", counted[0], i)]
        return counted[1]

    def bad(i: int, message: str) -> InputError:
        return InputError(path, line_of(i), None, message)

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        raise bad(i, "expected a JSON list of records")
    i = skip(i + 1)
    number = 0
    if i < len(text) and text[i] == "]":
        return
    while True:
        number += 1
        try:
            record, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise InputError(path, err.lineno, None, f"record {number}: invalid JSON ({err.msg})") from None
        yield number, line_of(i), record
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < len(text) and text[i] == "]":
            if skip(i + 1) != len(text):
                raise bad(skip(i + 1), "unexpected text after the list")
            return
        raise bad(i, f"record {number}: expected ',' or ']' after the record")


def text_field(record: Any, key: str, path: str, number: int, line: int) -> str:
    """A required non-empty string field of a record (surrounding spaces stripped)."""
    if not isinstance(record, dict):
        raise InputError(path, line, None, f"record {number}: expected a JSON object, got {type(record).__name__}")
    value = record.get(key)
    if value is None:
        raise InputError(path, line, key, f"record {number}: missing required field")
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, key, f"record {number}: must be a non-empty string, got {value!r}")
    if len(value.strip()) > MAX_TEXT_CHARS:
        raise InputError(path, line, key, f"record {number}: is {len(value.strip())} characters long; at most {MAX_TEXT_CHARS} are allowed (docs/formats.md)")
    return value.strip()
