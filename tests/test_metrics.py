"""Metric reductions against numpy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsim.metrics import masked_percentiles


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_percentiles__match_numpy_linear(n):
    rng = np.random.default_rng(n)
    x = rng.lognormal(size=200).astype(np.float32)
    mask = np.zeros(200, bool)
    mask[rng.choice(200, n, replace=False)] = True
    got = masked_percentiles(jnp.asarray(x), jnp.asarray(mask), (0, 50, 90, 99, 100))
    for q, v in got.items():
        assert float(v) == pytest.approx(np.percentile(x[mask].astype(np.float64), q),
                                         rel=5e-6)


def test_percentiles__empty_is_nan():
    got = masked_percentiles(jnp.ones(5), jnp.zeros(5, bool), (50,))
    assert np.isnan(float(got[50]))
