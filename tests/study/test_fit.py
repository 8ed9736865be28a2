"""The fits a study reports recover known laws, and refuse with a reason what they cannot fit."""

import math

import numpy as np
import pytest

from ckl.study import fit


STEPS = [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 63, 79, 86]


@pytest.mark.parametrize("a,t0,alpha", [(0.3, 2.0, 0.5), (0.02, 5.0, 1.2), (1.5, 0.5, 0.25)])
def test_the_shifted_power_law_recovers_its_exponent_within_5_percent(a, t0, alpha):
    t = np.array(STEPS, dtype=float)  # the steps a log-spaced curve of 86 steps scores
    y = a * ((t + t0) ** alpha - t0**alpha)
    got = fit.shifted_power_law(t, y)
    assert got.failed is None and got.r2 > 0.999
    assert abs(got.params["alpha"] - alpha) / alpha < 0.05
    # with 1% noise the shift t0 trades off against the exponent: within 10%, the curve within 5%
    noisy = y * (1 + 0.01 * np.random.default_rng(0).standard_normal(t.size))
    got = fit.shifted_power_law(t, noisy)
    assert got.r2 > 0.99 and abs(got.params["alpha"] - alpha) / alpha < 0.10
    assert np.allclose(fit.evaluate(got, t), y, rtol=0.05, atol=0.02 * y.max())


def test_a_saturating_curve_fits_with_a_negative_exponent():
    t = np.array(STEPS, dtype=float)
    y = 1 - (t + 1) ** -0.7  # rises then flattens
    got = fit.shifted_power_law(t, y)
    assert got.r2 > 0.99 and got.params["alpha"] < 0


def test_the_power_law_over_sizes_recovers_beta():
    x = np.array([2e4, 8e4, 3.2e5, 1.3e6, 3.5e6])
    got = fit.power_law(x, 0.7 * x**0.35)
    assert math.isclose(got.params["beta"], 0.35, rel_tol=1e-6) and got.r2 > 0.999


@pytest.mark.parametrize("x,y,why", [
    ([0, 1, 2], [0, 0.1, 0.2], "3 points, at least 5 needed"),
    ([0, 1, 2, 3, 4], [0, 0.1, float("nan"), 0.3, 0.4], "not finite"),
    ([0, 1, 2, 3, 4], [0.2] * 5, "nothing to fit"),
    ([0, -1, 2, 3, 4], [0, 0.1, 0.2, 0.3, 0.4], "steps must be >= 0"),
])
def test_a_fit_that_cannot_be_trusted_says_why_instead_of_a_number(x, y, why):
    got = fit.shifted_power_law(x, y)
    assert got.failed is not None and why in got.failed and got.params == {} and got.r2 is None
    assert fit.evaluate(got, x) is None


def test_a_power_law_refuses_values_at_or_below_zero():
    got = fit.power_law([1, 2, 3], [0.1, -0.2, 0.3])
    assert "x > 0 and y > 0" in got.failed


def test_a_fit_that_ends_on_a_bound_of_its_search_says_so():
    t = np.array(STEPS, dtype=float)
    y = np.where(t > 0, 2.0, 0.0) - 2.0 * np.exp(-t)  # a jump, then flat: the exponent wants to be below -5
    got = fit.shifted_power_law(t, y)
    assert got.at_bound == ("alpha",) and got.params["alpha"] == pytest.approx(-5.0, abs=1e-3)
    assert fit.shifted_power_law(t, 0.3 * ((t + 2) ** 0.5 - 2 ** 0.5)).at_bound == ()
