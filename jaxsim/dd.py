"""Double-float ("dd") arithmetic on float32 pairs: value = hi + lo, ~48 significant bits.

The cost model evaluates iteration times in this arithmetic so that summing millions of
them into the simulated clock does not accumulate float32 rounding bias: a float32
iteration time is off by up to a few ulps, the same few ulps every time a batch shape
repeats, which would make a long run's clock drift by ~1e-7 of its busy time.

Algorithms: TwoSum (Knuth), Veltkamp splitting and TwoProduct (Dekker), and the usual
double-double add / mul / div / Newton square root, in float32. Every operation is exact
or correctly compensated whether or not the compiler fuses multiply-adds (each partial
product of split halves is exact in float32). The functions are differentiable: the
derivative flows through ``hi``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from jaxsim.types import Array

_SPLIT = 4097.0  # 2**12 + 1: splits a float32 into two 12-bit halves


class DD(NamedTuple):
    """A double-float number ``hi + lo`` (|lo| <= ulp(hi) / 2)."""

    hi: Array
    lo: Array

    def value(self) -> Array:
        """Rounded to float32."""
        return self.hi + self.lo


def dd(x) -> DD:
    """A float32 value as a DD."""
    x = jnp.asarray(x, jnp.float32)
    return DD(x, jnp.zeros_like(x))


def two_sum(a: Array, b: Array) -> DD:
    """Exact a + b as (rounded sum, error)."""
    s = a + b
    bb = s - a
    return DD(s, (a - (s - bb)) + (b - bb))


def _fast_two_sum(a: Array, b: Array) -> DD:
    s = a + b
    return DD(s, b - (s - a))


def _split(a: Array) -> tuple[Array, Array]:
    t = _SPLIT * a
    hi = t - (t - a)
    return hi, a - hi


def two_prod(a: Array, b: Array) -> DD:
    """Exact a * b as (rounded product, error) (Dekker)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    err = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return DD(p, err)


def add(x: DD, y: DD) -> DD:
    """x + y."""
    s = two_sum(x.hi, y.hi)
    t = two_sum(x.lo, y.lo)
    s2 = _fast_two_sum(s.hi, s.lo + t.hi)
    return _fast_two_sum(s2.hi, s2.lo + t.lo)


def add_f(x: DD, y: Array) -> DD:
    """x + y for a float32 y."""
    s = two_sum(x.hi, y)
    return _fast_two_sum(s.hi, s.lo + x.lo)


def mul(x: DD, y: DD) -> DD:
    """x * y."""
    p = two_prod(x.hi, y.hi)
    return _fast_two_sum(p.hi, p.lo + (x.hi * y.lo + x.lo * y.hi))


def mul_f(x: DD, y: Array) -> DD:
    """x * y for a float32 y."""
    p = two_prod(x.hi, y)
    return _fast_two_sum(p.hi, p.lo + x.lo * y)


def div(x: DD, y: DD) -> DD:
    """x / y (one correction step after the float32 quotient)."""
    q1 = x.hi / y.hi
    r = add(x, neg(mul_f(y, q1)))
    q2 = r.hi / y.hi
    r = add(r, neg(mul_f(y, q2)))
    q3 = r.hi / y.hi
    s = _fast_two_sum(q1, q2)
    return add_f(s, q3)


def neg(x: DD) -> DD:
    """-x."""
    return DD(-x.hi, -x.lo)


def sqrt(x: DD) -> DD:
    """sqrt(x) for x >= 0 (0 -> 0), one Newton step from the float32 root."""
    pos = x.hi > 0
    xh = jnp.where(pos, x.hi, 1.0)
    y = jnp.sqrt(xh)
    r = add(DD(xh, jnp.where(pos, x.lo, 0.0)), neg(two_prod(y, y)))
    out = add_f(dd(y), r.hi / (2.0 * y))
    return DD(jnp.where(pos, out.hi, 0.0), jnp.where(pos, out.lo, 0.0))


def where(c: Array, x: DD, y: DD) -> DD:
    """Elementwise select."""
    return DD(jnp.where(c, x.hi, y.hi), jnp.where(c, x.lo, y.lo))


def maximum(x: DD, y: DD) -> DD:
    """Elementwise max."""
    return where((x.hi > y.hi) | ((x.hi == y.hi) & (x.lo >= y.lo)), x, y)


def minimum(x: DD, y: DD) -> DD:
    """Elementwise min."""
    return where((x.hi > y.hi) | ((x.hi == y.hi) & (x.lo >= y.lo)), y, x)
