"""Run directories ckl owns, and names that stay inside them.

A run directory carries a marker, `ckl-run.json`, written before anything else, that
holds a hash of the experiment (its stream, model and evaluation). `ckl run --out DIR`
writes only into a directory that is new, empty, or holds that marker (or is a run
directory made before the marker existed); a model directory, an input directory, a file
or any other non-empty directory is refused before anything is written.

Names taken from a config (the experiment's `name`, a method's label) become one path
component each, so that `name: "../../etc"` cannot leave `runs/` and two labels never
share one checkpoint directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ckl.core.errors import InputError
from ckl.data.facts import atomic_write_text

MARKER = "ckl-run.json"
_FORMAT = "ckl-run"


def path_component(name: str) -> str:
    """`name` as one safe path component: path separators, NUL and control characters
    become "_", and "", "." and ".." (or a leading ".") get a "_" in front. A name that is
    a plain component already is returned unchanged (existing `runs/<name>` stay valid)."""
    safe = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in name)
    if not safe or safe.startswith("."):
        safe = "_" + safe
    return safe[:200]


def short_hash(text: str) -> str:
    """8 hex digits of sha256(text): a suffix that keeps sanitised names injective."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def label_component(label: str) -> str:
    """A method label as a directory name that no other label maps to: the label with
    everything but letters, digits, "-", "_" and "." replaced by "_", plus a hash of the
    label itself (`x y` and `x_y` both sanitise to `x_y` but differ in the hash)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]
    return f"{safe}-{short_hash(label)}"


def legacy_label_component(label: str) -> str:
    """The directory name earlier ckl versions used for a label (not injective)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def experiment_hash(identity: dict) -> str:
    """sha256 of the parts of a resolved config that make an experiment (see
    `ckl.run.experiment.experiment_identity`)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _marker(run_dir: Path) -> dict | None:
    """The parsed marker, None when absent; an unreadable or foreign one is an InputError."""
    path = run_dir / MARKER
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("experiment"), str):
        raise InputError(str(path), None, None, "is damaged or not a ckl run marker; choose a new or empty output directory")
    return data


def _is_legacy_run(run_dir: Path) -> bool:
    """A run directory made by a ckl without markers: results.sqlite beside a config.json
    that is an experiment's (it has `methods`), not a model's."""
    config = run_dir / "config.json"
    if not (run_dir / "results.sqlite").is_file() or not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "methods" in data and "model_type" not in data


def check_run_dir(run_dir: Path, experiment: str) -> None:
    """Refuse an output directory ckl does not own, before anything is written.

    Args:
        experiment: the experiment hash (`experiment_hash`).

    Raises:
        InputError: `run_dir` is a file, a non-empty directory without the marker (a model
            directory, an input directory, anything else), or a marked directory of another
            experiment that holds no results to tell the difference by.
    """
    where = str(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise InputError(where, None, None, "is a broken symbolic link; choose a new or empty output directory")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise InputError(where, None, None, "exists and is not a directory; choose a new or empty output directory (--out)")
    try:
        # a marker being written by a run that started a moment earlier is no foreign file
        entries = [p.name for p in run_dir.iterdir() if not (p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp"))]
    except OSError as err:
        raise InputError(where, None, None, f"cannot read directory: {err.strerror}") from None
    if not entries:
        return
    marker = _marker(run_dir)
    if marker is not None:
        if marker["experiment"] != experiment and not (run_dir / "results.sqlite").exists():
            raise InputError(where, None, None, "holds files of a different experiment; choose another output directory")
        return  # same experiment, or the results store decides (and names what differs)
    if _is_legacy_run(run_dir):
        return
    what = "a model directory" if (run_dir / "config.json").is_file() and any(
        p.endswith((".safetensors", ".bin")) for p in entries) else "not empty and not a ckl run directory (no ckl-run.json)"
    raise InputError(where, None, None, f"is {what}; ckl writes a run only into a new or empty directory or one of its own runs: choose another --out")


def claim_run_dir(run_dir: Path, experiment: str) -> None:
    """Create `run_dir` if needed and write (or update) its marker; call after
    `check_run_dir`, before anything else is written there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        current = _marker(run_dir)
    except InputError:
        current = None
    if current is None or current["experiment"] != experiment:
        atomic_write_text(run_dir / MARKER, json.dumps({"format": _FORMAT, "version": 1, "experiment": experiment}, indent=2))
