"""Gates: conditions an updated model must meet before it may be shipped.

A gate is `NAME OP VALUE`, e.g. `retention>=0.98`, `acquisition >= 0.9`, `stale<=0.1`,
with OP one of >=, <=, >, <. The names are the numbers `ckl update` measures after the
update (statement probes, greedy exact match):

    retention    keep-set accuracy after / before (the facts that must stay)
    keep         keep-set accuracy after
    acquisition  accuracy on the learned (new) facts
    update       accuracy on the new object of updated facts
    stale        accuracy on the old object of updated facts (lower is better)
    forget       accuracy on the facts asked to be forgotten (lower is better)
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from ckl.core.errors import InputError
from ckl.results import numbers


def names() -> dict[str, str]:
    """Gate name -> what it measures: the gate-able numbers of ckl.results.numbers."""
    return {n.key: n.help for n in numbers.numbers("update") if n.gate}


_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    text: str
    name: str
    op: str
    threshold: float

    def check(self, value: float | None) -> bool:
        """Whether `value` passes; an unmeasured value (None) never passes."""
        return value is not None and _OPS[self.op](value, self.threshold)


def parse_gate(text: str) -> Gate:
    """Parse one gate expression.

    Raises:
        InputError: the expression is malformed or names an unknown measure; the
            message quotes the gate.
    """
    m = _GATE.match(text)
    if m is None:
        raise InputError(f"--gate '{text}'", None, None, "expected NAME>=VALUE (operators >=, <=, >, <), e.g. retention>=0.98")
    name, op, value = m.group(1), m.group(2), float(m.group(3))
    known = names()
    if name not in known:
        raise InputError(f"--gate '{text}'", None, None, f"unknown measure {name!r} (known: {', '.join(known)})")
    if not math.isfinite(value):
        raise InputError(f"--gate '{text}'", None, None, "the threshold must be a finite number")
    return Gate(text.strip(), name, op, value)


def check_measurable(gates: list[Gate], measured: set[str]) -> None:
    """Refuse, before any work, a gate on something this update does not measure.

    Raises:
        InputError: e.g. an acquisition gate without --learn.
    """
    need = {"acquisition": "--learn", "update": "--update", "stale": "--update", "forget": "--forget"}
    for gate in gates:
        if gate.name not in measured:
            raise InputError(f"--gate '{gate.text}'", None, None,
                             f"nothing measures {gate.name!r} in this update (give {need.get(gate.name, 'a keep-set')})")
