"""Double-float (hi + lo) time arithmetic in float32.

Simulated clocks reach hours, where one float32 ulp is milliseconds, while the latencies
we report are milliseconds. Times are therefore carried as unevaluated sums
``hi + lo`` of two float32 values (about 48 significant bits), using the error-free
TwoSum transformation. Differences of nearby times (TTFT, E2E) are then exact to float32
precision of the *difference*, not of the absolute clock.
"""

from __future__ import annotations

import numpy as np

from jaxsim import dd
from jaxsim.dd import DD
from jaxsim.types import Array


def dd_add(hi: Array, lo: Array, x: Array) -> tuple[Array, Array]:
    """``(hi + lo) + x`` as a normalised (hi, lo) pair."""
    out = dd.add_f(DD(hi, lo), x)
    return out.hi, out.lo


def dd_add2(hi: Array, lo: Array, xhi: Array, xlo: Array) -> tuple[Array, Array]:
    """``(hi + lo) + (xhi + xlo)`` as a normalised pair."""
    out = dd.add(DD(hi, lo), DD(xhi, xlo))
    return out.hi, out.lo


def dd_le(ahi: Array, alo: Array, bhi: Array, blo: Array) -> Array:
    """``a <= b`` for normalised pairs."""
    return (ahi < bhi) | ((ahi == bhi) & (alo <= blo))


def dd_lt(ahi: Array, alo: Array, bhi: Array, blo: Array) -> Array:
    """``a < b`` for normalised pairs."""
    return (ahi < bhi) | ((ahi == bhi) & (alo < blo))


def dd_sub(ahi: Array, alo: Array, bhi: Array, blo: Array) -> Array:
    """``a - b`` rounded to float32 (accurate when a and b are close)."""
    return (ahi - bhi) + (alo - blo)


def split_f64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host: split float64 values into float32 (hi, lo) with hi + lo == x to ~1e-14."""
    x = np.asarray(x, np.float64)
    hi = x.astype(np.float32)
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(x), x - hi.astype(np.float64), 0.0).astype(np.float32)
    return hi, lo


def join_f64(hi, lo) -> np.ndarray:
    """Host: float64 value of a (hi, lo) pair."""
    return np.asarray(hi, np.float64) + np.asarray(lo, np.float64)
