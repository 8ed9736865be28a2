"""The importer registry: each format module registers itself at its bottom, and
`ckl import NAME`, the docs' list and the contract suite (tests/data/formats/
test_importer_contract.py) read the registry. Adding an importer is its module (reader,
options dataclass, `register_importer`) and its test: `ckl import <name>` and its
options come from the registration.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckl.core.errors import InputError
from ckl.data.stream import Stream


@dataclass(frozen=True)
class Importer:
    name: str  # `ckl import <name>`
    options: type  # a dataclass; every field has metadata["help"] (it becomes a CLI option)
    load: Callable[[Path, Any], Stream]  # (source, options) -> the stream; raises InputError naming file/line/field
    help: str  # one line: what the format becomes
    source: str  # the source's metavar and what it is, e.g. ("FILE", "CounterFact's JSON file")
    source_help: str
    sample: Callable[[Path], Path]  # writes a small valid source under a directory; returns its path (the contract suite)
    describe: Callable[[Stream, Any], str] | None = None  # what `ckl import` prints after writing


REGISTRY: dict[str, Importer] = {}


def register_importer(importer: Importer) -> None:
    """Make an importer available as `ckl import <name>`.

    Raises:
        ValueError: the name is taken by another importer, or an option has no help.
    """
    old = REGISTRY.get(importer.name)
    if old is not None and (old.load.__module__, old.load.__qualname__) != (importer.load.__module__, importer.load.__qualname__):
        raise ValueError(f"the importer name {importer.name!r} is taken by {old.load.__module__}")
    missing = [f.name for f in dataclasses.fields(importer.options) if not f.metadata.get("help")]
    if missing:
        raise ValueError(f"importer {importer.name!r}: options without help: {', '.join(missing)}")
    REGISTRY[importer.name] = importer


def importers() -> dict[str, Importer]:
    """Import every module of `ckl.data.formats` (each registers itself) and return the registry."""
    import importlib
    import pkgutil

    import ckl.data.formats

    for info in pkgutil.iter_modules(ckl.data.formats.__path__, prefix="ckl.data.formats."):
        importlib.import_module(info.name)
    return REGISTRY


def import_to(name: str, source: str | Path, out: str | Path, options: dict | None = None) -> Stream:
    """Read `source` with importer `name` and `options`, and write the stream to `out`.
    Every check comes first; the stream is written to a sibling directory and renamed,
    so a failure leaves nothing at `out`.

    Raises:
        InputError: unknown importer or option, a bad option value, a malformed source
            (file, line, field), or `out` is a file or a non-empty directory.
    """
    registry = importers()
    if name not in registry:
        raise InputError("<options>", None, "format", f"unknown format {name!r} (known: {', '.join(sorted(registry))})")
    importer = registry[name]
    known = {f.name for f in dataclasses.fields(importer.options)}
    for key in options or {}:
        if key not in known:
            raise InputError("<options>", None, key, f"unknown option of {name} (known: {', '.join(sorted(known))})")
    try:
        config = importer.options(**(options or {}))
    except ValueError as err:
        raise InputError("<options>", None, getattr(err, "field", None), str(err)) from None
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(str(out), None, None, "output exists and is not an empty directory; choose a new --out (ckl never overwrites)")
    stream = importer.load(Path(source), config)
    tmp = out.with_name(out.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    stream.save(tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return stream


def describe_deletions(stream: Stream, options: Any) -> str:
    """What `ckl import` prints after writing an unlearning stream."""
    forgets = sum(len(c.forget) for c in stream.stages)
    return f"{len(stream.base)} facts to teach, {forgets} deletion requests in {stream.T} stage(s), {len(stream.unseen)} never-seen facts"

