"""Pareto fronts, hypervolume and a fixed-capacity front archive for multi-objective search.

Every objective is a cost (smaller is better). Point ``a`` dominates ``b`` iff ``a <= b`` in
every objective and ``a < b`` in at least one, so exact duplicates never dominate each other
and all copies of a non-dominated point stay on the front. Rows with a NaN or ``+inf`` cost,
or flagged invalid by a ``valid`` mask (lanes whose status is not OK), are never on the
front. Dominance is decided by a jitted pairwise comparison in row chunks (STYLE §3.10);
hypervolume, the archive, the plot and the sensitivity table are host-side numpy.

Dimension letters: ``B`` rows (configurations), ``k`` objectives, ``n`` front points.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsim.fileio import atomic_open

__all__ = [
    "ParetoArchive",
    "crowding_distance",
    "hypervolume",
    "non_dominated_mask",
    "pareto_front",
    "plot_pareto",
    "sensitivity_table",
]

# Smallest padded width of the "candidate dominators" axis; widths are padded to powers of
# two so the jitted kernel compiles O(log B) times, not once per chunk.
_MIN_PAD = 8


def _as_costs(costs: Any, name: str) -> np.ndarray:
    """``costs`` as a float64 ``[B, k]`` array, or ValueError naming ``name``."""
    c = np.asarray(costs, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 1:
        raise ValueError(f"{name} must have shape [B, k] with k >= 1, got shape {c.shape}")
    return c


def _as_valid(valid: Any, num_rows: int) -> np.ndarray:
    """``valid`` as a bool ``[B]`` mask (all True when None)."""
    if valid is None:
        return np.ones(num_rows, dtype=bool)
    v = np.asarray(valid)
    if v.shape != (num_rows,):
        raise ValueError(f"valid must have shape ({num_rows},), got shape {v.shape}")
    return v.astype(bool)


def _next_pow2(n: int) -> int:
    return max(_MIN_PAD, 1 << (max(n, 1) - 1).bit_length())


@jax.jit
def _dominated_kernel(rows: jax.Array, others: jax.Array, others_mask: jax.Array) -> jax.Array:
    """Which ``rows`` are dominated by some masked-in row of ``others``.

    Args:
        rows: ``[c, k]`` int32 per-objective ranks of the rows to test.
        others: ``[m, k]`` int32 ranks of the candidate dominators.
        others_mask: ``[m]`` bool; False marks padding.

    Returns:
        ``[c]`` bool, True where the row is dominated. Working memory is ``O(c * m)``.
    """
    k = rows.shape[1]
    # Unrolled over the (small, static) objective axis so every temporary is [c, m].
    le = others[None, :, 0] <= rows[:, None, 0]
    lt = others[None, :, 0] < rows[:, None, 0]
    for j in range(1, k):
        le = le & (others[None, :, j] <= rows[:, None, j])
        lt = lt | (others[None, :, j] < rows[:, None, j])
    return jnp.any(le & lt & others_mask[None, :], axis=1)


def non_dominated_mask(costs: Any, valid: Any = None, chunk: int = 4096) -> np.ndarray:
    """Mask of the rows on the Pareto front (all objectives minimised).

    Costs are first replaced by exact per-objective ranks (``np.unique``), so the int32
    comparison on device is exact whatever the float precision JAX runs in. Rows are then
    sorted lexicographically (first objective first): a dominator always sorts before the
    row it dominates, and every dominated row is dominated by some front row, so each chunk
    of ``chunk`` rows is compared only with the front found so far plus the chunk itself.
    Cost is ``O(B * (n + chunk) * k)`` time and ``O(chunk * (n + chunk))`` memory for a front
    of ``n`` rows; the worst case (every row on the front) is ``O(B^2 k / 2)``.

    Args:
        costs: ``[B, k]`` costs, ``k >= 1`` (typically 2 to 4).
        valid: optional ``[B]`` bool; False rows are never on the front.
        chunk: rows compared per jitted call (bounds memory).

    Returns:
        ``[B]`` bool numpy array, True for non-dominated valid rows with no NaN or ``+inf``
        cost. Exact duplicates of a non-dominated row are all True.

    Raises:
        ValueError: for a ``costs`` that is not ``[B, k]``, a ``valid`` of the wrong shape or
            a ``chunk`` below 1.
    """
    c = _as_costs(costs, "costs")
    num_rows, k = c.shape
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    chunk = int(chunk)
    ok = _as_valid(valid, num_rows) & ~np.any(np.isnan(c) | np.isposinf(c), axis=1)
    mask = np.zeros(num_rows, dtype=bool)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return mask

    ranks = np.empty((idx.size, k), dtype=np.int32)
    for j in range(k):
        ranks[:, j] = np.unique(c[idx, j], return_inverse=True)[1].reshape(-1)
    order = np.lexsort(ranks.T[::-1])  # lexsort's last key is the primary one
    ranks, idx = ranks[order], idx[order]

    n = idx.size
    c_rows = min(chunk, n)
    front = np.zeros(n, dtype=bool)
    for start in range(0, n, c_rows):
        stop = min(start + c_rows, n)
        # Dominators of rows [start, stop) are front rows before `start` or rows in the chunk.
        others = np.concatenate([ranks[:start][front[:start]], ranks[start:stop]])
        width = _next_pow2(others.shape[0])
        others_pad = np.zeros((width, k), dtype=np.int32)
        others_pad[: others.shape[0]] = others
        others_mask = np.arange(width) < others.shape[0]
        rows_pad = np.zeros((c_rows, k), dtype=np.int32)
        rows_pad[: stop - start] = ranks[start:stop]
        dominated = np.asarray(_dominated_kernel(rows_pad, others_pad, others_mask))
        front[start:stop] = ~dominated[: stop - start]
    mask[idx[front]] = True
    return mask


def pareto_front(costs: Any, valid: Any = None, chunk: int = 4096) -> np.ndarray:
    """Indices of the non-dominated rows, sorted by the first objective.

    Args:
        costs: ``[B, k]`` costs (minimised).
        valid: optional ``[B]`` bool mask of valid rows.
        chunk: rows per dominance chunk (see `non_dominated_mask`).

    Returns:
        ``[n]`` int64 row indices, ordered by objective 0, then 1, ..., then index.
    """
    c = _as_costs(costs, "costs")
    idx = np.flatnonzero(non_dominated_mask(c, valid=valid, chunk=chunk))
    keys = [idx] + [c[idx, j] for j in range(c.shape[1] - 1, -1, -1)]
    return idx[np.lexsort(keys)].astype(np.int64)


# ---------------------------------------------------------------------------------------
# hypervolume
# ---------------------------------------------------------------------------------------


def _hv2(points: np.ndarray, ref: np.ndarray) -> float:
    """2-D hypervolume by a sweep along objective 0 (points strictly inside ``ref``)."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    x = points[order, 0]
    y = np.minimum.accumulate(points[order, 1])
    widths = np.diff(np.append(x, ref[0]))
    return float(np.sum(widths * (ref[1] - y)))


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of ``points`` ``[n, k]``, all strictly better than ``ref`` ``[k]``.

    Hypervolume by Slicing Objectives (While et al., IEEE TEVC 2006): sweep the last
    objective upwards; each slab between consecutive levels contributes its thickness times
    the ``(k-1)``-D volume of the points at or below it. The slice's non-dominated set is
    kept incrementally and its volume reused when a new point is weakly dominated.
    """
    n, k = points.shape
    if n == 0:
        return 0.0
    if k == 1:
        return float(ref[0] - points[:, 0].min())
    if k == 2:
        return _hv2(points, ref)
    order = np.argsort(points[:, -1], kind="stable")
    p = points[order]
    thickness = np.diff(np.append(p[:, -1], ref[-1]))
    sub_ref = ref[:-1]
    slice_pts = np.empty((0, k - 1))
    slice_hv = 0.0
    total = 0.0
    for i in range(n):
        q = p[i, :-1]
        if not np.any(np.all(slice_pts <= q, axis=1)):
            # q enlarges the slice: drop the points it weakly dominates, then recompute.
            slice_pts = np.vstack([slice_pts[~np.all(q <= slice_pts, axis=1)], q])
            slice_hv = _hv(slice_pts, sub_ref)
        total += thickness[i] * slice_hv
    return float(total)


def hypervolume(front_costs: Any, ref: Any) -> float:
    """Exact volume dominated by ``front_costs`` and bounded by the reference point ``ref``.

    Points that are not strictly better than ``ref`` in every objective (including rows
    with a NaN or ``+inf`` cost) contribute nothing; dominated and duplicate points are
    allowed and change nothing. ``k = 1, 2`` are ``O(n log n)``; for ``k >= 3`` the slicing
    recursion costs roughly ``O(n^(k-1) log n)``, exponential in ``k``, which is fine for
    ``k <= 4`` and fronts of a few hundred points.

    Args:
        front_costs: ``[n, k]`` costs (minimised); ``n`` may be 0.
        ref: ``[k]`` finite reference point (an upper bound of the region of interest).

    Returns:
        The hypervolume as a Python float (0.0 if no point is strictly better than ``ref``).

    Raises:
        ValueError: if ``front_costs`` is not ``[n, k]``, ``ref`` is not finite with length
            ``k``, or a contributing point has a ``-inf`` cost (unbounded volume).
    """
    pts = _as_costs(front_costs, "front_costs")
    r = np.asarray(ref, dtype=np.float64)
    k = pts.shape[1]
    if r.shape != (k,):
        raise ValueError(f"ref must have shape ({k},) to match front_costs, got {r.tolist()}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"ref must be finite, got {r.tolist()}")
    pts = pts[np.all(pts < r, axis=1)]  # NaN compares False, so NaN rows drop out here
    if np.any(np.isneginf(pts)):
        raise ValueError("front_costs has a -inf cost below ref: the hypervolume is unbounded")
    return _hv(pts, r)


# ---------------------------------------------------------------------------------------
# archive
# ---------------------------------------------------------------------------------------


def crowding_distance(costs: Any) -> np.ndarray:
    """NSGA-II crowding distance of each point of a front (Deb et al., IEEE TEVC 2002).

    For each objective the points are sorted; the two extremes get ``inf`` and an interior
    point adds the gap between its neighbours divided by the objective's range.

    Args:
        costs: ``[n, k]`` finite costs of a front.

    Returns:
        ``[n]`` float64 distances; larger means more isolated.
    """
    c = _as_costs(costs, "costs")
    n, k = c.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(k):
        order = np.argsort(c[:, j], kind="stable")
        v = c[order, j]
        dist[order[0]] = dist[order[-1]] = np.inf
        span = v[-1] - v[0]
        if span > 0 and np.isfinite(span):
            dist[order[1:-1]] += (v[2:] - v[:-2]) / span
    return dist


class ParetoArchive:
    """Fixed-capacity archive of the non-dominated points seen across chunks.

    ``add`` merges a chunk with the archive and keeps the non-dominated rows. If more than
    ``capacity`` remain, the overflow policy drops the most crowded points (smallest
    crowding distance, recomputed as points go), which never drops an objective's extreme
    while ``capacity >= 2k``; ``overflowed`` and ``num_dropped`` record it. After an overflow
    the archive is an approximation: a later point dominated only by a dropped one may enter.

    Attributes:
        capacity: maximum number of points kept.
        costs: ``[n, k]`` float64 costs of the archived points, sorted by objective 0.
        ids: ``[n]`` int64 configuration ids of those points.
        overflowed: True once any point has been dropped by the overflow policy.
        num_dropped: number of non-dominated points dropped by the overflow policy.
    """

    def __init__(self, capacity: int, num_objectives: int | None = None):
        """Empty archive.

        Args:
            capacity: maximum number of points kept (>= 1).
            num_objectives: ``k``; if None it is taken from the first `add`.

        Raises:
            ValueError: for a capacity below 1 or ``num_objectives`` below 1.
        """
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if num_objectives is not None and num_objectives < 1:
            raise ValueError(f"num_objectives must be >= 1, got {num_objectives!r}")
        self.capacity = int(capacity)
        self.num_objectives = num_objectives
        self.costs = np.empty((0, num_objectives or 0), dtype=np.float64)
        self.ids = np.empty(0, dtype=np.int64)
        self.overflowed = False
        self.num_dropped = 0

    def __len__(self) -> int:
        """Number of archived points ``n``."""
        return int(self.ids.shape[0])

    def add(self, costs: Any, ids: Any, valid: Any = None) -> None:
        """Merge a chunk of evaluated configurations into the archive.

        Args:
            costs: ``[m, k]`` costs of the chunk (minimised).
            ids: ``[m]`` integer configuration ids of the chunk rows.
            valid: optional ``[m]`` bool; invalid, NaN and ``+inf`` rows are ignored.

        Raises:
            ValueError: if ``costs`` is not ``[m, k]`` with the archive's ``k`` or ``ids``
                is not ``[m]``.
        """
        c = _as_costs(costs, "costs")
        m, k = c.shape
        if self.num_objectives is None:
            self.num_objectives = k
            self.costs = np.empty((0, k), dtype=np.float64)
        if k != self.num_objectives:
            raise ValueError(
                f"costs must have {self.num_objectives} objectives, got shape {c.shape}"
            )
        i = np.asarray(ids)
        if i.shape != (m,) or not (m == 0 or np.issubdtype(i.dtype, np.integer)):
            raise ValueError(f"ids must be integers of shape ({m},), got {i.dtype} {i.shape}")
        keep = _as_valid(valid, m) & ~np.any(np.isnan(c) | np.isposinf(c), axis=1)
        all_costs = np.concatenate([self.costs, c[keep]])
        all_ids = np.concatenate([self.ids, i[keep].astype(np.int64)])
        front = pareto_front(all_costs)
        all_costs, all_ids = all_costs[front], all_ids[front]
        if all_ids.shape[0] > self.capacity:
            keep_idx = self._truncate(all_costs)
            self.num_dropped += all_ids.shape[0] - keep_idx.size
            self.overflowed = True
            all_costs, all_ids = all_costs[keep_idx], all_ids[keep_idx]
        self.costs, self.ids = all_costs, all_ids

    def _truncate(self, costs: np.ndarray) -> np.ndarray:
        """Sorted indices of the ``capacity`` points kept by the crowding-distance policy."""
        alive = np.arange(costs.shape[0])
        while alive.size > self.capacity:
            excess = alive.size - self.capacity
            # Remove in rounds of at most 10% so big overflows take O(log n) rounds while
            # the last removals still see up-to-date distances.
            step = min(excess, max(1, alive.size // 10))
            dist = crowding_distance(costs[alive])
            # Stable sort: among equal distances the earlier point (smaller objective 0) goes.
            drop = np.argsort(dist, kind="stable")[:step]
            alive = np.delete(alive, drop)
        return alive


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------


def plot_pareto(
    costs: Any,
    front_idx: Any = None,
    labels: Sequence[str] = ("obj0", "obj1"),
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Scatter of two objectives with the Pareto front highlighted as a staircase.

    pyplot is imported only when a figure must be shown (``ax`` and ``path`` both None);
    with ``path`` and no ``ax`` the figure is a bare Agg ``Figure``, so no global backend
    or notebook state changes.

    Args:
        costs: ``[B, 2]`` values to draw: costs (minimised) when ``front_idx`` is None,
            else any values, e.g. the metrics with maximised ones not negated; rows with
            a NaN or infinite value are skipped.
        front_idx: optional ``[n]`` row indices of the front; computed when None.
        labels: axis labels for objectives 0 and 1.
        ax: matplotlib Axes to draw on; a new figure is created when None.
        path: if given, the figure is saved there atomically (temporary file, then
            ``os.replace``); the format comes from the suffix (PNG when there is none).

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: if ``costs`` is not ``[B, 2]``.
    """
    c = _as_costs(costs, "costs")
    if c.shape[1] != 2:
        raise ValueError(f"costs must have shape [B, 2] to plot, got shape {c.shape}")
    if front_idx is None:
        front_idx = pareto_front(c)
    front_idx = np.asarray(front_idx, dtype=np.int64)
    front = c[front_idx]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    finite = np.all(np.isfinite(c), axis=1)

    if ax is None:
        if path is not None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=(5, 4))
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
        else:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(c[finite, 0], c[finite, 1], s=8, alpha=0.3, color="tab:gray", label="all")
    ax.step(front[:, 0], front[:, 1], where="post", color="tab:red", lw=1.2)
    ax.scatter(front[:, 0], front[:, 1], s=18, color="tab:red", zorder=3, label="front")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(loc="best")

    if path is not None:
        path = os.fspath(path)
        fmt = os.path.splitext(path)[1].lstrip(".") or "png"
        with atomic_open(path, "wb") as fh:
            ax.figure.savefig(fh, format=fmt, dpi=120, bbox_inches="tight")
    return ax


def sensitivity_table(
    names: Sequence[str], grads: Any, values: Any, objective: str = "objective"
) -> str:
    """Text table of knobs ranked by the effect of a +1% change on the objective.

    The effect is the first-order estimate ``grad * value * 0.01`` (an elasticity times
    the objective's scale); rows are ranked by ``|grad * value|``, NaN effects last.

    Args:
        names: ``[d]`` knob names.
        grads: ``[d]`` d objective / d knob at the winner.
        values: ``[d]`` knob values at the winner.
        objective: name of the objective for the column header.

    Returns:
        A plain-text table with columns rank, knob, value, d objective/d knob, effect +1%.

    Raises:
        ValueError: if the three inputs do not have the same length.
    """
    names = [str(n) for n in names]
    g = np.asarray(grads, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not (len(names) == g.size == v.size):
        raise ValueError(
            f"names, grads and values must have equal lengths, got {len(names)}, {g.size}, {v.size}"
        )
    effect = g * v * 0.01
    key = np.where(np.isnan(effect), -1.0, np.abs(effect))
    order = np.argsort(-key, kind="stable")
    header = ["rank", "knob", "value", f"d {objective}/d knob", "effect of +1%"]
    rows = [
        [
            str(r + 1),
            names[i],
            f"{v[i]:.4g}",
            f"{g[i]:.4g}",
            "nan" if np.isnan(effect[i]) else f"{effect[i]:+.4g}",
        ]
        for r, i in enumerate(order)
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def fmt(cells: list[str]) -> str:
        # the knob name is left-aligned, every other column right-aligned
        out = [
            c.ljust(w) if j == 1 else c.rjust(w)
            for j, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)
