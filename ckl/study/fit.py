"""The fits studies report: a shifted power law over steps and a power law over sizes.

scipy's `curve_fit` does the optimisation; this module chooses the forms, the starting
points and the bounds, and refuses a fit it cannot trust (too few points, values that are
not finite, no variation) with the reason instead of a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fit:
    """A fitted law: its parameters by name, R^2 on the points it was fitted to, and how
    many points that was. `failed` holds why there is no fit (then params is empty)."""

    law: str
    params: dict[str, float]
    r2: float | None
    points: int
    failed: str | None = None
    at_bound: tuple[str, ...] = ()  # parameters the least-squares search left on a bound of its range: read them as "beyond"

    def as_dict(self) -> dict:
        return {"law": self.law, "params": self.params, "r2": self.r2, "points": self.points, "failed": self.failed, "at_bound": list(self.at_bound)}


SHIFTED = "A * ((t + t0)^alpha - t0^alpha)"
POWER = "A * x^beta"


def _clean(x: Sequence[float], y: Sequence[float], law: str, need: int) -> tuple[np.ndarray, np.ndarray] | Fit:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        return Fit(law, {}, None, 0, f"x and y differ in length ({x.size} and {y.size})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return Fit(law, {}, None, int(x.size), "a value is not finite")
    if x.size < need:
        return Fit(law, {}, None, int(x.size), f"{x.size} points, at least {need} needed")
    if np.ptp(y) == 0:
        return Fit(law, {}, None, int(x.size), "every y is the same: nothing to fit")
    return x, y


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    residual = float(np.sum((y - predicted) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - residual / total


def shifted_power_law(t: Sequence[float], y: Sequence[float]) -> Fit:
    """Fit y(t) = A * ((t + t0)^alpha - t0^alpha), a power law in t shifted by t0 that is 0
    at t = 0 (forgetting measured from the start of fine-tuning), by least squares.

    alpha > 0 with A > 0: y grows as a power of the steps; alpha < 0 with A < 0: y grows
    and saturates. Needs >= 5 points with t >= 0. alpha is searched in [-5, 5] and t0 in
    [1e-6, 1e6]; a fit that ends on a bound says so (`at_bound`): the data want a value
    beyond it (e.g. a jump then a plateau, alpha "below -5"). No flag does not make the
    exponent real: noisy step-like data can also end at a steep alpha inside the range
    with a tiny A and t0 (read R^2 and the plot).
    """
    cleaned = _clean(t, y, SHIFTED, 5)
    if isinstance(cleaned, Fit):
        return cleaned
    t, y = cleaned
    if (t < 0).any():
        return Fit(SHIFTED, {}, None, int(t.size), "steps must be >= 0")
    from scipy.optimize import curve_fit

    def law(t, a, t0, alpha):
        return a * ((t + t0) ** alpha - t0**alpha)

    positive = (t > 0) & (y > 0)
    alpha0 = 0.5
    if positive.sum() >= 2:  # the slope of the log-log line: where the search starts
        alpha0 = float(np.clip(np.polyfit(np.log(t[positive]), np.log(y[positive]), 1)[0], 0.05, 3.0))
    a0 = float(y[-1] / max(t[-1] ** alpha0, 1e-12)) or 1.0
    best = None
    for start in ((a0, 1.0, alpha0), (-abs(a0), 1.0, -0.5), (a0, 10.0, alpha0)):
        try:
            params, _ = curve_fit(law, t, y, p0=start, bounds=([-np.inf, 1e-6, -5.0], [np.inf, 1e6, 5.0]), maxfev=20000)
        except (RuntimeError, ValueError):  # no convergence from this start
            continue
        r2 = _r2(y, law(t, *params))
        if math.isfinite(r2) and (best is None or r2 > best[1]):
            best = (params, r2)
    if best is None:
        return Fit(SHIFTED, {}, None, int(t.size), "least squares did not converge from any start")
    (a, t0, alpha), r2 = best
    edge = tuple(name for name, close in (
        ("t0", abs(math.log(t0 / 1e-6)) < 1e-3 or abs(math.log(t0 / 1e6)) < 1e-3),  # t0 spans decades: compare on a log scale
        ("alpha", min(abs(alpha + 5.0), abs(alpha - 5.0)) < 1e-4),
    ) if close)
    return Fit(SHIFTED, {"A": float(a), "t0": float(t0), "alpha": float(alpha)}, r2, int(t.size), at_bound=edge)


def power_law(x: Sequence[float], y: Sequence[float]) -> Fit:
    """Fit y = A * x^beta by least squares on log y against log x (x, y > 0). Needs >= 3 points."""
    cleaned = _clean(x, y, POWER, 3)
    if isinstance(cleaned, Fit):
        return cleaned
    x, y = cleaned
    if (x <= 0).any() or (y <= 0).any():
        return Fit(POWER, {}, None, int(x.size), "a power law needs x > 0 and y > 0 (a value is <= 0)")
    beta, log_a = np.polyfit(np.log(x), np.log(y), 1)
    r2 = _r2(np.log(y), log_a + beta * np.log(x))
    return Fit(POWER, {"A": float(math.exp(log_a)), "beta": float(beta)}, r2, int(x.size))


def evaluate(fit: Fit, x: Sequence[float]) -> list[float] | None:
    """The fitted law at `x` (None for a failed fit), for plotting."""
    if fit.failed:
        return None
    x = np.asarray(x, dtype=float)
    p = fit.params
    if fit.law == SHIFTED:
        return (p["A"] * ((x + p["t0"]) ** p["alpha"] - p["t0"] ** p["alpha"])).tolist()
    return (p["A"] * x ** p["beta"]).tolist()
