"""Validation of method option values, shared by every config dataclass's __post_init__.

Each check raises ValueError naming the option; the config loader prefixes the method and
field (`methods[2].ewc.gamma: ...`), so the user sees where the bad value is.
"""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A config value is invalid; `field` names the option (so a loader can point at its
    file line without parsing the message)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_number(value, name: str, low: float | None = None, low_open: bool = False, optional: bool = False, high: float | None = None) -> None:
    """A finite int or float (bools refused), >= low (> low when low_open), <= high."""
    if optional and value is None:
        return
    bounds = " and ".join(([f"{'>' if low_open else '>='} {low}"] if low is not None else []) + ([f"<= {high}"] if high is not None else []))
    what = f"a finite number{' ' + bounds if bounds else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"{name} must be {what}, got {value!r}")  # NaN and inf are refused here
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        raise ConfigError(name, f"{name} must be {what}, got {value!r}")


MAX_COUNT = 10**9  # epochs, steps, sizes: a count beyond this is a typo, and would not fit the store's integers


def check_count(value, name: str, low: int = 1) -> None:
    """An int (bools refused) >= low (default: a positive integer), at most MAX_COUNT."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(name, f"{name} must be {what}, got {value!r}")
    if value > MAX_COUNT:
        raise ConfigError(name, f"{name} must be at most {MAX_COUNT:,}, got {value:.3g}")


def check_flag(value, name: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, f"{name} must be true or false, got {value!r}")


def check_unit(value, name: str) -> None:
    """A number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # NaN fails the comparison
        raise ConfigError(name, f"{name} must be in [0, 1], got {value!r}")


def closest(word: str, choices, cutoff: float = 0.6) -> str | None:
    """The one of `choices` a mistyped `word` most likely meant (difflib's ratio >= cutoff), or None."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: str, choices) -> str:
    """" (did you mean 'train'?)" for the closest of `choices` to a mistyped `word`, or ""."""
    close = closest(word, choices)
    return f" (did you mean {close!r}?)" if close else ""
