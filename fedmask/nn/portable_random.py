"""Random numbers every machine computes bit for bit alike, for the seeded weights.

Two machines must rebuild the same frozen weights from a seed (HideNseek, FedPM,
MPFL, SSFL send the seed, not the weights). torch's CPU generators do not promise
that: their normal and uniform kernels differ by vector unit (AVX2 against the
``default`` path of CPUs without it) and by release. This module does:

* integers: the Philox-4x64 counter-based generator of ``numpy.random.Philox``, keyed
  directly by the seed (no seeding hash), whose raw stream numpy keeps fixed across
  versions and platforms (integer arithmetic only);
* floats: from those integers with exactly rounded IEEE-754 operations only (``+``,
  ``-``, ``*``, ``/``, ``sqrt``, ``frexp``, conversions), one element at a time in
  numpy, so no math library, fused multiply-add or vector path can change a bit.
  The normal deviates are the inverse normal CDF (Acklam's rational approximation,
  relative error below 1.2e-9) of uniforms, with a logarithm computed from those
  operations alone (:func:`log`).

:data:`GENERATOR` names this definition; it travels with the seed, so that a node
whose fedmask computes other numbers refuses by name instead of training on other
weights.
"""

from __future__ import annotations

import math

import numpy as np

GENERATOR = "philox-acklam-1"  # this module's definition of the numbers; bump on change

_LN2 = 0.6931471805599453  # ln 2, the float64 nearest
_SQRT_HALF = 0.7071067811865476
# Acklam's inverse normal CDF: central region numerator/denominator, then tails.
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01, 1.0)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
      3.754408661907416e+00, 1.0)
_P_LOW = 0.02425


class PortableStream:
    """The seed's stream of 64-bit integers, drawn in order (one per element)."""

    def __init__(self, seed: int) -> None:
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed: must be in [0, 2**64), got {seed}")
        self._bits = np.random.Philox(key=seed)

    def integers(self, count: int) -> np.ndarray:
        """The next `count` raw 64-bit integers."""
        return np.asarray(self._bits.random_raw(count), dtype=np.uint64)

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 in [0, 1): the top 53 bits of each integer times 2**-53."""
        return (self.integers(count) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def open_uniform(self, count: int) -> np.ndarray:
        """`count` float64 in (0, 1): ``(2k + 1) * 2**-53`` from the top 52 bits ``k``."""
        top = (self.integers(count) >> np.uint64(12)).astype(np.float64)
        return (2.0 * top + 1.0) * 2.0**-53

    def signs(self, count: int) -> np.ndarray:
        """`count` float64 +1 or -1, from each integer's top bit."""
        return (self.integers(count) >> np.uint64(63)).astype(np.float64) * 2.0 - 1.0

    def normal(self, count: int) -> np.ndarray:
        """`count` standard normal float64 deviates (:func:`normal_quantile`)."""
        return normal_quantile(self.open_uniform(count))


def _horner(coefficients: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """The polynomial with `coefficients` (highest power first) at `x`."""
    out = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        out *= x
        out += c
    return out


def log(x: np.ndarray) -> np.ndarray:
    """Natural logarithm of positive float64 `x` from exactly rounded operations:
    ``x = m 2**e`` (``frexp``, ``m`` in [sqrt(1/2), sqrt(2))), then
    ``log m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, by its series to 12 terms
    (``|s| < 0.172``: error below 1e-16)."""
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    series = _horner(tuple(1.0 / (2 * k + 1) for k in range(11, -1, -1)), z)
    return 2.0 * s * series + e * _LN2


def normal_quantile(p: np.ndarray) -> np.ndarray:
    """The standard normal quantile of float64 `p` in (0, 1) (Acklam's approximation,
    relative error below 1.2e-9), from exactly rounded operations only."""
    q = p - 0.5
    r = q * q
    out = _horner(_A, r)
    out *= q
    out /= _horner(_B, r)
    tails = np.flatnonzero((p < _P_LOW) | (p > 1.0 - _P_LOW))
    lower = p[tails] < 0.5
    t = np.sqrt(-2.0 * log(np.where(lower, p[tails], 1.0 - p[tails])))
    tail = _horner(_C, t) / _horner(_D, t)
    out[tails] = np.where(lower, tail, -tail)
    return out


def kaiming_std(fan_in: int) -> float:
    """``sqrt(2 / fan_in)``, Kaiming's standard deviation for ReLU networks."""
    return math.sqrt(2.0 / fan_in)
