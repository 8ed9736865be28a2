"""Stage checkpoints of one (method, seed): written atomically, verified when read.

A checkpoint is a Hugging Face model directory plus the method's state:
`ckl_state.json` (the stage, the method's JSON state, the row's StageInfo, the label) and
`ckl_state.safetensors` (the method's tensors). `ckl_state.json` is written last and holds
the sha256 of every other file of the checkpoint and of its own content, so a truncated,
overwritten or garbled file is found when the checkpoint is read: the runner then discards
it with a warning and recomputes from the base model (the last good state; only the
latest checkpoint is kept), which gives the same results as an uninterrupted run.

Directory names are `<label, sanitised>-<hash of the label>-seed<seed>` (`ckl.run.rundir`), so
two labels never share one; a run made before the hash suffix keeps resuming (its
directory is renamed when exactly one of the run's labels maps to it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ckl.core.files import file_sha256
from ckl.model import lm
from ckl.data.facts import atomic_write_text
from ckl.run.rundir import label_component, legacy_label_component

STATE = "ckl_state.json"
TENSORS = "ckl_state.safetensors"


class CheckpointError(Exception):
    """A checkpoint cannot be used: a file is missing, truncated or does not match its
    recorded sha256, or the state is not valid JSON of the expected shape."""


def checkpoint_dir(run_dir: Path, label: str, seed: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{label_component(label)}-seed{seed}"


@contextmanager
def locked(ckpt: Path) -> Iterator[None]:
    """Hold the checkpoint's lock (an flock on a sibling file): two processes running the
    same command into one directory then never read a checkpoint half replaced, nor
    write one at once. Without fcntl (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ckpt.parent / f".{ckpt.name}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _pending(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".new")


def _finish_pending(ckpt: Path) -> None:
    """A crash between writing a checkpoint and its rename leaves it complete in `.new`
    (ckl_state.json is written last): finish the rename."""
    pending = _pending(ckpt)
    if not (ckpt / STATE).exists() and (pending / STATE).exists():
        shutil.rmtree(ckpt, ignore_errors=True)
        pending.rename(ckpt)


def adopt_legacy(run_dir: Path, label: str, seed: int, labels: list[str]) -> None:
    """Rename the checkpoint of a run made before directory names carried a hash, when
    `label` is the only one of the run's `labels` that mapped to that directory (two
    labels that shared it cannot tell whose model it holds: both recompute)."""
    ckpt = checkpoint_dir(run_dir, label, seed)
    legacy = Path(run_dir) / "checkpoints" / f"{legacy_label_component(label)}-seed{seed}"
    if not legacy.exists() and not _pending(legacy).exists():
        return
    with locked(legacy), locked(ckpt):
        _adopt_legacy(ckpt, legacy, label, labels)


def _adopt_legacy(ckpt: Path, legacy: Path, label: str, labels: list[str]) -> None:
    _finish_pending(legacy)
    if (ckpt / STATE).exists() or (_pending(ckpt) / STATE).exists() or not (legacy / STATE).exists():
        return
    if sum(legacy_label_component(other) == legacy_label_component(label) for other in set(labels) | {label}) == 1:
        shutil.rmtree(ckpt, ignore_errors=True)
        legacy.rename(ckpt)


def _content_hash(state: dict) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def save(ckpt: Path, model, tokenizer, stage: int, method_state: dict, info, label: str) -> None:
    """Model and method state of one stage, replacing the previous stage's atomically."""
    with locked(ckpt):
        _save(ckpt, model, tokenizer, stage, method_state, info, label)


def _save(ckpt: Path, model, tokenizer, stage: int, method_state: dict, info, label: str) -> None:
    tmp = _pending(ckpt)
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save(model, tokenizer, tmp)
    data, tensors = split_state(method_state)
    if tensors:
        save_file(tensors, str(tmp / TENSORS))
    files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    state = {"stage": stage, "label": label, "method": data, "info": asdict(info), "files": files}
    state["sha256"] = _content_hash(state)
    atomic_write_text(tmp / STATE, json.dumps(state))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def exists(ckpt: Path) -> bool:
    """Whether a checkpoint is on disk (finishing a rename a crash interrupted)."""
    with locked(ckpt):
        _finish_pending(ckpt)
        return (ckpt / STATE).exists()


def verify(ckpt: Path, label: str, last_stage: int) -> dict:
    """The checkpoint's state after checking every file against its recorded sha256.

    A checkpoint written before checksums existed (no `files`) is accepted here; reading
    its weights (`load`) is the check.

    Raises:
        CheckpointError: naming what is wrong.
    """
    with locked(ckpt):
        return _verify(ckpt, label, last_stage)


def _verify(ckpt: Path, label: str, last_stage: int) -> dict:
    try:
        state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{STATE} is unreadable ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{STATE} is not a JSON object")
    if "files" in state or "sha256" in state:
        recorded = state.pop("sha256", None)
        if recorded != _content_hash(state):
            raise CheckpointError(f"{STATE} does not match its recorded sha256")
        files = state.get("files")
        if not isinstance(files, dict) or not files:
            raise CheckpointError(f"{STATE} lists no files")
        for name, digest in files.items():
            path = ckpt / name
            if not path.is_file():
                raise CheckpointError(f"{name} is missing")
            if file_sha256(path) != digest:
                raise CheckpointError(f"{name} does not match its recorded sha256")
        if state.get("label") != label:
            raise CheckpointError(f"it was written for method {state.get('label')!r}, not {label!r}")
    stage = state.get("stage")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= last_stage:
        raise CheckpointError(f"{STATE} has no valid stage (got {stage!r})")
    if not isinstance(state.get("method"), dict) or not isinstance(state.get("info"), dict):
        raise CheckpointError(f"{STATE} lacks the method state or the row info")
    return state


def load(ckpt: Path, method) -> tuple[Any, Any, dict]:
    """(model, tokenizer, saved state) of a stage checkpoint, with `method`'s state loaded
    and what it keeps beside the saved weights (adapters, memories) put back on the model.
    The files are not verified here: call `verify` first (the runner does)."""
    state = json.loads((ckpt / STATE).read_text())
    model, tokenizer = lm.load(ckpt)
    method.load_state_dict(join_state(state["method"], ckpt / TENSORS))
    model = method.restore(model)
    method.use_tokenizer(tokenizer)
    return model, tokenizer, state


def load_verified(ckpt: Path, method, label: str, last_stage: int) -> tuple[Any, Any, dict]:
    """`verify`, then `load`, under the lock; any failure to read the files is a CheckpointError."""
    with locked(ckpt):
        _verify(ckpt, label, last_stage)
        try:
            return load(ckpt, method)
        except Exception as err:  # a damaged file of a checkpoint without checksums, or one the checks cannot see
            raise CheckpointError(f"cannot be read ({type(err).__name__}: {str(err)[:200]})") from None


def discard(ckpt: Path) -> None:
    with locked(ckpt):
        shutil.rmtree(ckpt, ignore_errors=True)


def split_state(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Method state -> (JSON part, tensors keyed "part/key") for checkpointing."""
    data: dict = {}
    tensors: dict[str, torch.Tensor] = {}
    for part, values in state.items():
        data[part] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{part}/{key}"] = value.detach().cpu().contiguous()
            else:
                data[part][key] = value
    return data, tensors


def state_bytes(state) -> int:
    """How many bytes a method's state holds beside the model's weights: tensors by their
    storage, everything else by its JSON text (what a checkpoint writes for it); parts
    that keep nothing count 0."""
    state = _without_empty(state)
    return 0 if state in ({}, [], None) else _bytes(state)


def _without_empty(value):
    if isinstance(value, dict):
        kept = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if not (isinstance(v, (dict, list, tuple)) and len(v) == 0)}
    return value


def _bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict) and _holds_tensors(state):
        return sum(len(json.dumps(str(k))) + _bytes(v) for k, v in state.items())
    if isinstance(state, (list, tuple)) and _holds_tensors(state):
        return sum(_bytes(v) for v in state)
    return len(json.dumps(state, default=str))


def _holds_tensors(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(v) for v in value)
    return False


def join_state(data: dict, tensor_file: Path) -> dict:
    state = {part: dict(values) for part, values in data.items()}
    if tensor_file.exists():
        for name, tensor in load_file(str(tensor_file)).items():
            part, key = name.split("/", 1)
            state.setdefault(part, {})[key] = tensor
    return state
