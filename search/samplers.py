"""Samplers of the unit cube, addressed by configuration id.

Every sampler is a pure function of (ids, d, seed): the point of configuration ``i`` is the
same whichever chunk it lands in, so a sweep split into chunks, resumed, or run on many
machines evaluates exactly the same points.

- :func:`grid`: the full grid in lexicographic order; ``ids`` are unravelled into level
  indices, so the grid is never materialised whole.
- :func:`random`: i.i.d. uniform coordinates from a counter-based hash (SplitMix64) of
  (seed, id, axis).
- :func:`halton`: the Halton sequence (bases: the first ``d`` primes) with random digit
  permutations per base and digit position (seeded), which breaks the correlation of
  plain Halton in higher dimensions. Implemented here, so no SciPy dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (uint64 -> well-mixed uint64)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash_uniform(seed: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from a hash of (seed, keys...), broadcast over keys."""
    h = _splitmix64(np.full((), np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
    for k in keys:
        with np.errstate(over="ignore"):
            h = _splitmix64(h ^ np.asarray(k).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def grid(shape: Sequence[int], ids: np.ndarray, axis_u: Sequence[np.ndarray]) -> np.ndarray:
    """Grid points ``ids`` of a grid of ``shape`` (lexicographic, last axis fastest).

    Args:
        shape: points per axis.
        ids: int64 [n] flat indices into the grid.
        axis_u: per axis, the unit-cube coordinate of each of its grid points.

    Returns:
        float64 [n, d].
    """
    ids = np.asarray(ids, np.int64)
    if len(shape) == 0:
        return np.zeros((len(ids), 0))
    idx = np.unravel_index(ids, tuple(int(s) for s in shape))
    return np.stack([np.asarray(axis_u[j])[idx[j]] for j in range(len(shape))], axis=1)


def random(ids: np.ndarray, d: int, seed: int) -> np.ndarray:
    """i.i.d. uniform points (float64 [n, d]), a pure function of (seed, id)."""
    ids = np.asarray(ids, np.int64)
    return _hash_uniform(seed, ids[:, None], np.arange(d)[None, :])


def _primes(n: int) -> list[int]:
    out: list[int] = []
    c = 2
    while len(out) < n:
        if all(c % p for p in out if p * p <= c):
            out.append(c)
        c += 1
    return out


def halton(ids: np.ndarray, d: int, seed: int) -> np.ndarray:
    """Scrambled Halton points (float64 [n, d]); point ``i`` uses index ``i + 1``.

    Digit ``k`` of the index in base ``b`` is mapped through a random permutation of
    ``0..b-1`` drawn per (seed, axis, k). Digits continue past the index's length (its
    zero digits are permuted too) until ``b**-k`` drops below 2**-53, so points fill
    ``[0, 1)`` without a bias towards 0.
    """
    ids = np.asarray(ids, np.int64) + 1
    out = np.zeros((len(ids), d))
    for j, b in enumerate(_primes(d)):
        n_dig = int(np.ceil(53 / np.log2(b)))
        rest = ids.copy()
        scale = 1.0
        acc = np.zeros(len(ids))
        for k in range(n_dig):
            digit = rest % b
            rest //= b
            keys = _hash_uniform(seed, np.array(j), np.array(k), np.arange(b))
            perm = np.argsort(keys, kind="stable")
            scale /= b
            acc += perm[digit] * scale
        out[:, j] = acc
    return np.minimum(out, np.nextafter(1.0, 0.0))
