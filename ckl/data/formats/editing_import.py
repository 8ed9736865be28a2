"""`ckl import counterfact|zsre FILE --out DIR`: an editing benchmark file -> a stream directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from ckl.core.errors import InputError
from ckl.data.stream import Stream

FORMATS = ("counterfact", "zsre")


def import_stream(fmt: str, path: str | Path, out: str | Path, edits: int | None, batch: int, untouched: int,
                  forms: bool = True, taught_targets: bool = True, seed: int = 0) -> Stream:
    """Read `path` in format `fmt`, build the editing stream (`forms`, `taught_targets`,
    `seed`: ckl.data.formats.edits.edit_stream) and write it to `out`.

    The stream is written to a sibling directory and renamed, so a failure leaves
    nothing partial at `out`.

    Raises:
        InputError: unknown format, malformed record (file, line, record number, field),
            impossible counts, or `out` exists and is not empty.
    """
    from ckl.data.formats.counterfact import counterfact_stream
    from ckl.data.formats.zsre import zsre_stream

    build = {"counterfact": counterfact_stream, "zsre": zsre_stream}.get(fmt)
    if build is None:
        raise InputError("<options>", None, "format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(str(out), None, None, "output directory exists and is not empty")
    stream = build(path, edits=edits, batch=batch, untouched=untouched, forms=forms, taught_targets=taught_targets, seed=seed)
    tmp = out.with_name(out.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    stream.save(tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return stream
