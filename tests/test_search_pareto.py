"""Tests for search/pareto.py: dominance against brute force, hypervolume, archive, reports."""

import numpy as np
import pytest

from search.pareto import (
    ParetoArchive,
    crowding_distance,
    hypervolume,
    non_dominated_mask,
    pareto_front,
    plot_pareto,
    sensitivity_table,
)


def _brute_mask(costs, valid=None):
    """O(B^2) reference: a row is on the front iff valid, finite-or--inf, and undominated."""
    c = np.asarray(costs, dtype=np.float64)
    B = c.shape[0]
    ok = ~np.any(np.isnan(c) | np.isposinf(c), axis=1)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    out = np.zeros(B, dtype=bool)
    for i in range(B):
        if not ok[i]:
            continue
        dominated = False
        for j in range(B):
            if j != i and ok[j] and np.all(c[j] <= c[i]) and np.any(c[j] < c[i]):
                dominated = True
                break
        out[i] = not dominated
    return out


def _random_costs(rng, B, k):
    """Integer-valued costs (many ties), exact duplicate rows, and NaN / inf rows."""
    c = rng.integers(0, 6, size=(B, k)).astype(np.float64)
    c[5:10] = c[0:5]  # exact duplicates
    c[12, 0] = np.nan
    c[13, k - 1] = np.inf
    c[14] = -1.0  # would dominate everything if it were valid; it is masked out below
    return c


# ---------------------------------------------------------------------------------------
# non_dominated_mask / pareto_front
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4])
def test_non_dominated_mask__matches_brute_force(k):
    rng = np.random.default_rng(k)
    c = _random_costs(rng, 60, k)
    valid = np.ones(60, dtype=bool)
    valid[14] = False
    valid[20] = False
    want = _brute_mask(c, valid)
    got = non_dominated_mask(c, valid=valid)
    np.testing.assert_array_equal(got, want)
    assert not got[12] and not got[13] and not got[14]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_non_dominated_mask__chunked_equals_unchunked(k):
    rng = np.random.default_rng(10 + k)
    c = _random_costs(rng, 50, k)
    c[30:] = rng.random((20, k))  # continuous values too
    full = non_dominated_mask(c, chunk=10_000)
    for chunk in (1, 3, 7, 16):
        np.testing.assert_array_equal(non_dominated_mask(c, chunk=chunk), full)
    np.testing.assert_array_equal(full, _brute_mask(c))


def test_non_dominated_mask__keeps_all_exact_duplicates():
    c = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0]])
    np.testing.assert_array_equal(non_dominated_mask(c, chunk=2), [True, True, True, False, True])


def test_non_dominated_mask__invalid_rows_never_on_front_and_empty_cases():
    c = np.array([[0.0, 0.0], [1.0, 1.0], [np.nan, 0.0], [2.0, 0.5]])
    # row 0 dominates everything, but masked out it no longer hides rows 1 and 3
    np.testing.assert_array_equal(
        non_dominated_mask(c, valid=[False, True, True, True]), [False, True, False, True]
    )
    assert non_dominated_mask(np.full((3, 2), np.nan)).sum() == 0
    assert non_dominated_mask(np.zeros((0, 3))).shape == (0,)


def test_non_dominated_mask__precision_beyond_float32():
    # differences below float32 resolution must still decide dominance exactly
    c = np.array([[1.0, 1.0], [1.0 + 1e-12, 1.0]])
    np.testing.assert_array_equal(non_dominated_mask(c), [True, False])


def test_non_dominated_mask__one_objective():
    c = np.array([[3.0], [1.0], [1.0], [2.0]])
    np.testing.assert_array_equal(non_dominated_mask(c), [False, True, True, False])


def test_non_dominated_mask__rejects_bad_inputs():
    with pytest.raises(ValueError, match="costs"):
        non_dominated_mask(np.zeros(5))
    with pytest.raises(ValueError, match="valid"):
        non_dominated_mask(np.zeros((5, 2)), valid=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="chunk"):
        non_dominated_mask(np.zeros((5, 2)), chunk=0)


def test_pareto_front__sorted_by_first_objective():
    rng = np.random.default_rng(3)
    c = rng.random((80, 3))
    idx = pareto_front(c, chunk=16)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(_brute_mask(c)))
    assert np.all(np.diff(c[idx, 0]) >= 0)


# ---------------------------------------------------------------------------------------
# hypervolume
# ---------------------------------------------------------------------------------------


def _mc_hypervolume(front, ref, num_samples, seed):
    rng = np.random.default_rng(seed)
    lo = front.min(axis=0)
    u = lo + rng.random((num_samples, front.shape[1])) * (ref - lo)
    dominated = np.any(np.all(front[None, :, :] <= u[:, None, :], axis=2), axis=1)
    return dominated.mean() * np.prod(ref - lo)


def test_hypervolume__2d_hand_worked():
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == pytest.approx(6.0)
    assert hypervolume([[1, 1]], [3, 2]) == pytest.approx(2.0)


def test_hypervolume__cubes_and_boxes():
    assert hypervolume([[0, 0, 0]], [1, 1, 1]) == pytest.approx(1.0)
    assert hypervolume([[0, 0, 0]], [2, 3, 4]) == pytest.approx(24.0)
    # two unit cubes overlapping in a 0.5 x 1 x 1 slab -> 1.5
    assert hypervolume([[0, 0, 0], [0.5, 0, 0]], [1.5, 1, 1]) == pytest.approx(1.5)
    # L-shape in 3-D: two boxes [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1] -> 2 + 2 - 1
    assert hypervolume([[0, 1, 0], [1, 0, 0]], [2, 2, 1]) == pytest.approx(3.0)
    assert hypervolume([[0, 0, 0, 0]], [1, 2, 3, 4]) == pytest.approx(24.0)
    assert hypervolume([[2.0], [1.0]], [5.0]) == pytest.approx(4.0)


@pytest.mark.parametrize("k", [3, 4])
def test_hypervolume__matches_monte_carlo(k):
    rng = np.random.default_rng(100 + k)
    pts = rng.random((25, k))
    front = pts / np.linalg.norm(pts, axis=1, keepdims=True)  # points on the unit sphere
    ref = np.full(k, 1.1)
    exact = hypervolume(front, ref)
    mc = _mc_hypervolume(front, ref, 200_000, seed=k)
    assert exact == pytest.approx(mc, rel=0.02)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_hypervolume__invariant_to_order_and_dominated_points(k):
    rng = np.random.default_rng(200 + k)
    pts = rng.random((30, k))
    front = pts[non_dominated_mask(pts)]
    ref = np.full(k, 1.2)
    hv = hypervolume(front, ref)
    assert hypervolume(front[rng.permutation(front.shape[0])], ref) == pytest.approx(hv)
    assert hypervolume(pts, ref) == pytest.approx(hv)  # dominated points add nothing
    assert hypervolume(np.vstack([front, front]), ref) == pytest.approx(hv)


def test_hypervolume__points_outside_ref_contribute_nothing():
    ref = [4.0, 4.0]
    base = hypervolume([[1, 3], [2, 2], [3, 1]], ref)
    extra = [[4, 0], [5, 5], [0, 4], [np.nan, 0], [np.inf, 0]]
    assert hypervolume([[1, 3], [2, 2], [3, 1], *extra], ref) == pytest.approx(base)
    assert hypervolume(np.zeros((0, 2)), ref) == 0.0


def test_hypervolume__rejects_bad_inputs():
    with pytest.raises(ValueError, match="ref"):
        hypervolume([[1, 2]], [3, 3, 3])
    with pytest.raises(ValueError, match="ref"):
        hypervolume([[1, 2]], [3, np.inf])
    with pytest.raises(ValueError, match="front_costs"):
        hypervolume([1, 2], [3, 3])
    with pytest.raises(ValueError, match="unbounded"):
        hypervolume([[-np.inf, 0]], [1, 1])


# ---------------------------------------------------------------------------------------
# archive
# ---------------------------------------------------------------------------------------


def _as_set(costs, ids):
    return {(int(i), *map(float, c)) for c, i in zip(costs, ids, strict=True)}


@pytest.mark.parametrize("k", [2, 3])
def test_archive__chunks_equal_whole_front(k):
    rng = np.random.default_rng(300 + k)
    c = rng.integers(0, 8, size=(120, k)).astype(np.float64)
    c[50:55] = c[0:5]  # duplicates across chunks
    c[7, 0] = np.nan
    ids = np.arange(1000, 1120, dtype=np.int64)
    valid = rng.random(120) > 0.1
    archive = ParetoArchive(capacity=500)
    for s in range(0, 120, 25):
        archive.add(c[s : s + 25], ids[s : s + 25], valid=valid[s : s + 25])
    idx = pareto_front(c, valid=valid)
    assert _as_set(archive.costs, archive.ids) == _as_set(c[idx], ids[idx])
    assert archive.ids.dtype == np.int64 and archive.costs.shape == (len(archive), k)
    assert not archive.overflowed and archive.num_dropped == 0
    assert np.all(np.diff(archive.costs[:, 0]) >= 0)


@pytest.mark.parametrize("k", [2, 3])
def test_archive__overflow_keeps_capacity_and_extremes(k):
    rng = np.random.default_rng(400 + k)
    pts = rng.random((400, k))
    c = pts / np.linalg.norm(pts, axis=1, keepdims=True)  # all mutually non-dominated
    ids = np.arange(400)
    capacity = 30
    archive = ParetoArchive(capacity=capacity, num_objectives=k)
    for s in range(0, 400, 100):
        archive.add(c[s : s + 100], ids[s : s + 100])
    assert len(archive) == capacity
    assert archive.overflowed
    assert archive.num_dropped == 400 - capacity
    np.testing.assert_array_equal(archive.costs, c[archive.ids])
    # the best point of each objective is never dropped
    for j in range(k):
        assert archive.costs[:, j].min() == c[:, j].min()
    assert np.all(non_dominated_mask(archive.costs))


def test_archive__rejects_bad_inputs():
    with pytest.raises(ValueError, match="capacity"):
        ParetoArchive(capacity=0)
    archive = ParetoArchive(capacity=4, num_objectives=2)
    with pytest.raises(ValueError, match="objectives"):
        archive.add(np.zeros((3, 3)), np.arange(3))
    with pytest.raises(ValueError, match="ids"):
        archive.add(np.zeros((3, 2)), np.arange(2))


def test_crowding_distance__extremes_infinite_and_spacing():
    c = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(c)
    assert np.isinf(d[0]) and np.isinf(d[3])
    # interior: (3 - 0) / 4 in each objective -> 1.5 each
    np.testing.assert_allclose(d[1:3], [1.5, 1.5])


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------


def test_plot_pareto__writes_png(tmp_path):
    rng = np.random.default_rng(5)
    c = rng.random((40, 2))
    c[3] = np.nan
    path = tmp_path / "front.png"
    ax = plot_pareto(c, labels=("latency_s", "cost_usd"), path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ax.get_xlabel() == "latency_s"
    assert [p.name for p in tmp_path.iterdir()] == ["front.png"]  # no leftover temp file


def test_sensitivity_table__ranked_by_effect():
    table = sensitivity_table(
        ["batch_limit", "num_replicas", "block_size", "chunk"],
        grads=[0.001, -2.0, 0.5, np.nan],
        values=[256.0, 4.0, 16.0, 1.0],
    )
    lines = table.splitlines()
    assert "effect of +1%" in lines[0]
    body = [line.split() for line in lines[2:]]
    # |grad * value|: num_replicas 8, block_size 8 -> stable, then batch_limit 0.256, NaN last
    assert [row[1] for row in body] == ["num_replicas", "block_size", "batch_limit", "chunk"]
    assert [row[0] for row in body] == ["1", "2", "3", "4"]
    assert body[0][-1] == "-0.08"
    with pytest.raises(ValueError, match="lengths"):
        sensitivity_table(["a"], [1.0, 2.0], [1.0])
