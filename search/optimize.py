"""Optimisers over a design space: exhaustive, CMA-ES, and gradient search.

All three evaluate points through :class:`Evaluator`, which decodes unit-cube points to
configurations, simulates them in fixed-size batches (one compile for the whole search)
and returns costs from :mod:`search.objectives` (``+inf`` for infeasible or SLO-missing
lanes). Every result carries the decoded configuration and its status.

Gradient search. The simulator's scheduling decisions are discrete, so the objective is
piecewise constant in the knobs and its pathwise gradient is zero almost everywhere.
``gradient_search`` therefore optimises a relaxation: the Gaussian smoothing
``J(z) = E[f(sigmoid(z) + sigma * eps)]`` of the objective over unconstrained variables
``z``, whose gradient it estimates with antithetic pairs of exact simulations
(``(f(u + sigma e) - f(u - sigma e)) e / (2 sigma)``, all pairs in one batch) and follows
with optax Adam. Infeasible points get a finite penalty (twice the worst feasible cost
seen) so the estimate stays finite. Every evaluated point is an exact simulation, and the
result is the best exactly simulated point (re-checked at the end).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsim import status as st_bits
from search import objectives as ob
from search import runner, samplers
from search.cmaes import CMAES, minimize
from search.space import DesignSpace


@dataclasses.dataclass
class SearchResult:
    """The best point a search found.

    Attributes:
        u: its unit-cube coordinates [d].
        config: its validated configuration.
        cost: its objective as a cost (+inf if no feasible point was found).
        value: the objective's own value (not negated).
        status: its simulator status bits (0 = OK).
        evaluations: exact simulations this search spent (an evaluator keeps what it
            simulated: points an earlier search on it already ran cost nothing).
        history: best cost after each batch of evaluations.
    """

    u: np.ndarray
    config: dict
    cost: float
    value: float
    status: int
    evaluations: int
    history: list[float]

    @property
    def status_str(self) -> str:
        return st_bits.describe(self.status)


class Evaluator:
    """Cost of unit-cube points (fixed batch size B; one compile per slot-table size)."""

    def __init__(self, space: DesignSpace, objective: str, slo: Mapping | None = None,
                 prices: Mapping | None = None, batch_size: int = 64,
                 slots: int | None = None, max_iterations: int | None = None):
        n_dev = len(jax.local_devices())
        self.batch_size = -(-batch_size // n_dev) * n_dev
        self.plan = runner.make_plan(space, chunk_size=self.batch_size, slots=slots)
        self.batch_size = self.plan.chunk_size  # no larger than the space (make_plan's cap)
        self.space, self.objective = space, objective
        axes = [a.key for a in space.axes]
        self.slo = ob.checked_slo(slo, axes=axes)  # fail early, before anything compiles
        self.prices = dict(prices or {})
        self.max_iterations = max_iterations
        self.traces = runner._TraceCache()
        self.evaluations = 0
        self._cache: dict[bytes, tuple[float, float, int]] = {}
        ob.check_name("objective", objective, axes)
        names = {objective, *(k.removeprefix("min_") for k in self.slo)}
        for name in names & set(ob.DERIVED):  # the prices a derived objective needs
            ob.derived({"tp": np.ones(1), "output_tps": np.ones(1), "goodput_rps": np.ones(1),
                        "gpu": np.array([space.base.get("gpu", "H100-SXM")])},
                       name, self.prices)

    def _key(self, u: np.ndarray) -> bytes:
        """Points that decode to the same configuration share one simulation."""
        cols = self.space.decode_columns(u[None])
        return repr(sorted((k, str(v[0])) for k, v in cols.items())).encode()

    def __call__(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(costs, values, status) of points ``u`` [n, d]; each new point is simulated."""
        u = np.clip(np.atleast_2d(np.asarray(u, np.float64)), 0.0, 1.0)
        keys = [self._key(x) for x in u]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        uniq: dict[bytes, int] = {}
        for i in todo:
            uniq.setdefault(keys[i], i)
        idx = list(uniq.values())
        B = self.batch_size
        for s in range(0, len(idx), B):
            part = idx[s:s + B]
            pad = part + [part[-1]] * (B - len(part))
            batch = runner.batch_at_points(self.space, self.plan, u[pad], self.traces)
            m = runner.simulate_chunk(self.plan, batch, max_iterations=self.max_iterations)
            # the sweep's results columns (metrics, axes, memory figures): any name a
            # space file's objective or SLO may use
            table = {k: np.asarray(v)[:len(part)]
                     for k, v in runner.rows_from_chunk(self.space, batch, m).items()}
            c = ob.costs(table, [self.objective], self.slo, self.prices)[:, 0]
            v = ob.derived(table, self.objective, self.prices)
            for j, i in enumerate(part):
                self._cache[keys[i]] = (float(c[j]), float(v[j]), int(table["status"][j]))
            self.evaluations += len(part)
        res = [self._cache[k] for k in keys]
        return (np.array([r[0] for r in res]), np.array([r[1] for r in res]),
                np.array([r[2] for r in res], np.int64))

    def result(self, u: np.ndarray, history: list[float], start: int = 0) -> SearchResult:
        """The search's result at ``u``; ``start``: ``evaluations`` when it began."""
        c, v, s = self(u[None])
        return SearchResult(u=np.asarray(u), config=self.space.expand(u[None])[0][0],
                            cost=float(c[0]), value=float(v[0]), status=int(s[0]),
                            evaluations=self.evaluations - start, history=history)


class TableEvaluator(Evaluator):
    """An :class:`Evaluator` over a grid space whose every point was already simulated
    (by :func:`exhaustive`): a point's cost is read from that table. Simulation is
    deterministic, so this equals simulating it again; ``evaluations`` counts the
    distinct points read. Used to benchmark optimisers over many seeds cheaply."""

    def __init__(self, space: DesignSpace, costs: np.ndarray, values: np.ndarray,
                 status: np.ndarray):
        if space.sampler != "grid" or any(a.kind == "float" for a in space.axes):
            raise ValueError("TableEvaluator needs a grid space of discrete axes")
        self.space, self.batch_size = space, len(costs)
        self.costs, self.values, self.status = costs, values, status
        self.evaluations = 0
        self._seen: set[int] = set()

    def __call__(self, u):
        u = np.clip(np.atleast_2d(np.asarray(u, np.float64)), 0.0, 1.0)
        shape = self.space.grid_shape()
        lv = np.stack([np.minimum((u[:, j] * n).astype(np.int64), n - 1)
                       for j, n in enumerate(shape)], axis=1)
        ids = np.ravel_multi_index(tuple(lv.T), shape)
        new = set(ids.tolist()) - self._seen
        self._seen |= new
        self.evaluations += len(new)
        return self.costs[ids], self.values[ids], self.status[ids]


def grid_table(ev: Evaluator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(costs, values, status) of every grid point, in id order (exact simulations)."""
    sp = ev.space
    cs, vs, ss = [], [], []
    for s in range(0, sp.size, ev.batch_size):
        c, v, st = ev(sp.sample(np.arange(s, min(s + ev.batch_size, sp.size))))
        cs.append(c)
        vs.append(v)
        ss.append(st)
    return np.concatenate(cs), np.concatenate(vs), np.concatenate(ss)


def exhaustive(ev: Evaluator) -> SearchResult:
    """Every point of the space's grid (the reference optimum)."""
    sp = ev.space
    if sp.sampler != "grid":
        raise ValueError("exhaustive: the space must use the grid sampler")
    best_c, best_u, hist = np.inf, None, []
    start = ev.evaluations
    for s in range(0, sp.size, ev.batch_size):
        u = sp.sample(np.arange(s, min(s + ev.batch_size, sp.size)))
        c, _, _ = ev(u)
        i = int(np.argmin(c))
        if best_u is None or c[i] < best_c:
            best_c, best_u = float(c[i]), u[i]
        hist.append(best_c)
    return ev.result(best_u, hist, start)


def _check_budget(max_evals) -> None:
    if isinstance(max_evals, bool) or not isinstance(max_evals, int | np.integer) \
            or max_evals < 1:
        raise ValueError(f"max_evals: {max_evals!r} must be an integer >= 1 (simulations "
                         "the search may run)")


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise ValueError(f"{name}: {v!r} must be an integer >= {lo}")
    return int(v)


def _check_float(name: str, v, lo: float, hi: float, lo_open: bool = True,
                 hi_open: bool = False) -> float:
    ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) \
        and math.isfinite(v) and (v > lo if lo_open else v >= lo) \
        and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, hb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{name}: {v!r} must be a number in {lb}{lo:g}, {hi:g}{hb}")
    return float(v)


def _warm_start(ev: Evaluator, n: int, seed: int) -> tuple[np.ndarray, float]:
    """Best of ``n`` scrambled-Halton points (exact simulations)."""
    u = samplers.halton(np.arange(n), ev.space.num_dims, seed)
    c, _, _ = ev(u)
    i = int(np.argmin(c))
    return u[i], float(c[i])


def cmaes_search(ev: Evaluator, max_evals: int, seed: int = 0,
                 population_size: int | None = None, sigma_init: float = 0.2,
                 warm_start: int = 32, patience: int = 6) -> SearchResult:
    """CMA-ES with margin for discrete axes and restarts; at most ``max_evals`` new
    simulations.

    ``warm_start`` quasi-random points are simulated first. Each CMA-ES run starts at the
    best of them whose discrete levels differ from every earlier run's start, and stops
    when its best has not improved for ``patience`` generations; the next run then
    restarts elsewhere, until the budget is spent. (0 warm-start points: one run from the
    centre.)
    """
    _check_budget(max_evals)
    warm_start = min(_check_int("warm_start", warm_start, 0), max_evals)  # in the budget
    sigma_init = _check_float("sigma_init", sigma_init, 0.0, 1.0)  # of the unit cube
    patience = _check_int("patience", patience, 1)
    strat = CMAES.from_space(ev.space, population_size=population_size)
    base = strat.default_params()
    base = eqx.tree_at(lambda p: p.sigma_init, base, jnp.float32(sigma_init))
    hist: list[float] = []
    best = {"c": np.inf, "u": None}
    start = ev.evaluations
    starts: list[np.ndarray] = [np.full(ev.space.num_dims, 0.5)]
    if warm_start:
        pool = samplers.halton(np.arange(warm_start), ev.space.num_dims, seed)
        c0, _, _ = ev(pool)
        order = np.argsort(c0, kind="stable")
        best["c"], best["u"] = float(c0[order[0]]), pool[order[0]]
        hist.append(best["c"])
        disc = [j for j, n in enumerate(ev.space.levels) if n]

        def levels(u):
            return tuple(min(int(u[j] * ev.space.levels[j]), ev.space.levels[j] - 1)
                         for j in disc)

        seen, starts = set(), []
        for i in order:
            if np.isfinite(c0[i]) and levels(pool[i]) not in seen:
                seen.add(levels(pool[i]))
                starts.append(pool[i])
        starts = starts or [pool[order[0]]]
    key = jax.random.key(seed)
    run = idle = 0
    while ev.evaluations - start + strat.population_size <= max_evals:
        before = ev.evaluations
        params = eqx.tree_at(lambda p: p.mean_init, base,
                             jnp.asarray(starts[run % len(starts)], jnp.float32))
        run_best = {"c": np.inf, "stale": 0}

        def f(u_pop, run_best=run_best):
            c, _, _ = ev(np.asarray(u_pop, np.float64))
            i = int(np.argmin(c))
            if best["u"] is None or c[i] < best["c"]:
                best["c"], best["u"] = float(c[i]), np.asarray(u_pop[i], np.float64)
            if c[i] < run_best["c"]:
                run_best["c"], run_best["stale"] = float(c[i]), 0
            else:
                run_best["stale"] += 1
            hist.append(best["c"])
            return c

        def stop(*_a, run_best=run_best, **_k):
            return (ev.evaluations - start + strat.population_size > max_evals
                    or run_best["stale"] >= patience)

        key, sub = jax.random.split(key)
        minimize(f, strat, sub, num_generations=10**6, params=params, callback=stop)
        run += 1
        # a run from every start simulated nothing new: every point the runs reach is
        # simulated already (a small discrete space), so the budget cannot be spent
        idle = idle + 1 if ev.evaluations == before else 0
        if not warm_start or idle >= len(starts):
            break
    if best["u"] is None:  # a budget below one generation and no warm start: the centre
        best["u"] = np.full(ev.space.num_dims, 0.5)
    return ev.result(best["u"], hist, start)


def sensitivities(ev: Evaluator, u: np.ndarray, rel_step: float = 0.05
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """"Why this configuration": d objective / d knob at ``u`` for each continuous axis.

    Central differences of exact simulations, ``rel_step`` of the knob's value on each
    side (the objective is piecewise constant at the scale of single scheduling
    decisions, so an infinitesimal step would read 0). Returns (knob names, gradients
    in objective units per knob unit, knob values); see
    :func:`search.pareto.sensitivity_table` to print them ranked.
    """
    names, grads, vals = [], [], []
    for j, a in enumerate(ev.space.axes):
        if a.kind != "float":
            continue
        x = float(a.decode(np.array([u[j]]))[0])
        h = max(abs(x) * rel_step, 1e-12)
        lo, hi = max(x - h, a.low), min(x + h, a.high)
        if hi <= lo:
            continue
        pts = np.stack([u, u])
        pts[0, j], pts[1, j] = a.encode(lo), a.encode(hi)
        _, v, _ = ev(pts)
        names.append(a.key)
        grads.append((v[1] - v[0]) / (hi - lo))
        vals.append(x)
    return names, np.array(grads, np.float64), np.array(vals, np.float64)


def _diverse_starts(ev: Evaluator, n: int, seed: int) -> tuple[list[np.ndarray], float,
                                                                 np.ndarray]:
    """Best of ``n`` quasi-random points, one per combination of discrete levels, best
    first; returns (starts, best cost, best point)."""
    pool = samplers.halton(np.arange(n), ev.space.num_dims, seed)
    c0, _, _ = ev(pool)
    order = np.argsort(c0, kind="stable")
    disc = [j for j, k in enumerate(ev.space.levels) if k]
    seen, starts = set(), []
    for i in order:
        lv = tuple(min(int(pool[i][j] * ev.space.levels[j]), ev.space.levels[j] - 1)
                   for j in disc)
        if np.isfinite(c0[i]) and lv not in seen:
            seen.add(lv)
            starts.append(pool[i])
    return starts or [pool[order[0]]], float(c0[order[0]]), pool[order[0]]


def gradient_search(ev: Evaluator, max_evals: int, seed: int = 0, pairs: int = 4,
                    starts: int = 4, sigma: float = 0.1, sigma_final: float = 0.02,
                    learning_rate: float = 0.3, u0: np.ndarray | None = None,
                    warm_start: int = 32, round_budget: float = 0.3) -> SearchResult:
    """Adam on a Gaussian-smoothed relaxation of the objective (see module docstring),
    then rounding: a neighbourhood search from the relaxed optimum (one discrete level or
    ``sigma_final``, along one axis, then along two at once) while a neighbour is better
    and the budget allows (``round_budget`` evaluations are kept for it).

    ``starts`` descents run side by side (their samples share one simulated batch per
    step), from the best ``warm_start`` quasi-random points with distinct discrete levels
    (or from ``u0``). The smoothing width decays geometrically from ``sigma`` to
    ``sigma_final`` over the budget (wide early to see past plateaus, narrow late).
    """
    _check_budget(max_evals)
    warm_start = min(_check_int("warm_start", warm_start, 0), max_evals)  # in the budget
    pairs = _check_int("pairs", pairs, 1)
    starts = _check_int("starts", starts, 1)
    sigma = _check_float("sigma", sigma, 0.0, 1.0)
    sigma_final = _check_float("sigma_final", sigma_final, 0.0, 1.0)
    learning_rate = _check_float("learning_rate", learning_rate, 0.0, math.inf, hi_open=True)
    round_budget = _check_float("round_budget", round_budget, 0.0, 1.0, lo_open=False,
                                hi_open=True)
    d = ev.space.num_dims
    rng = np.random.default_rng(seed)
    hist: list[float] = []
    best = {"c": np.inf, "u": np.full(d, 0.5)}
    start = ev.evaluations
    if u0 is not None:
        init = [np.asarray(u0, np.float64)]
    elif warm_start:
        init, c0, b0 = _diverse_starts(ev, warm_start, seed)
        best["c"], best["u"] = c0, b0
        hist.append(c0)
    else:
        init = [np.full(d, 0.5)]
    init = init[:starts]
    K = len(init)
    u_init = np.clip(np.stack(init), 0.02, 0.98)
    z = jnp.asarray(np.log(u_init / (1.0 - u_init)), jnp.float32)  # [K, d]
    opt = optax.adam(learning_rate)
    state = opt.init(z)
    worst = {"c": 1.0}
    per_step = 2 * pairs * K
    descent_evals = int(max_evals * (1.0 - round_budget))
    steps = max(1, (descent_evals - (ev.evaluations - start)) // per_step)
    step = 0
    # repeated points cost nothing, so cap the steps too (converged runs repeat points)
    while ev.evaluations - start + per_step <= descent_evals and step < 4 * steps:
        u = np.asarray(jax.nn.sigmoid(z), np.float64)
        sig = sigma * (sigma_final / sigma) ** min(step / max(steps - 1, 1), 1.0)
        step += 1
        eps = rng.standard_normal((K, pairs, d))
        pts = np.concatenate([u[:, None] + sig * eps, u[:, None] - sig * eps], axis=1)
        pts = np.abs(pts)
        pts = np.where(pts > 1.0, 2.0 - pts, pts).reshape(K * 2 * pairs, d)  # reflect
        c, _, _ = ev(pts)
        fin = np.isfinite(c)
        if fin.any():
            worst["c"] = max(worst["c"], float(np.max(np.abs(c[fin]))))
            i = int(np.argmin(np.where(fin, c, np.inf)))
            if c[i] < best["c"]:
                best["c"], best["u"] = float(c[i]), pts[i]
        pen = np.where(fin, c, 2.0 * worst["c"]).reshape(K, 2 * pairs)
        g_u = ((pen[:, :pairs] - pen[:, pairs:])[..., None] * eps).mean(axis=1) / (2.0 * sig)
        g_u = g_u / (np.std(pen, axis=1, keepdims=True) + 1e-12)
        _, vjp = jax.vjp(jax.nn.sigmoid, z)
        (g_z,) = vjp(jnp.asarray(g_u, jnp.float32))
        upd, state = opt.update(g_z, state, z)
        z = optax.apply_updates(z, upd)
        hist.append(best["c"])
    # re-check: the final means as well as the best sample, in the exact simulator
    u_fin = np.asarray(jax.nn.sigmoid(z), np.float64)
    if ev.evaluations - start + len(u_fin) <= max_evals:
        c_fin, _, _ = ev(u_fin)
        i = int(np.argmin(c_fin))
        if c_fin[i] < best["c"]:
            best["c"], best["u"] = float(c_fin[i]), u_fin[i]
    # round the relaxed optimum: move to a better neighbour (one level, or sigma_final on
    # a continuous axis, along one axis; then along two axes at once) while one exists
    # and the budget allows
    for pairs_too in (False, True):
        while True:
            nb = _neighbours(ev.space, best["u"], sigma_final, pairs_too)
            if len(nb) == 0 or ev.evaluations - start + len(nb) > max_evals:
                break
            c, _, _ = ev(nb)
            i = int(np.argmin(c))
            if not c[i] < best["c"]:
                break
            best["c"], best["u"] = float(c[i]), nb[i]
            hist.append(best["c"])
    return ev.result(best["u"], hist, start)


def _moves(space: DesignSpace, u: np.ndarray, step: float, j: int) -> list[float]:
    n = space.levels[j]
    if not n:
        return [float(np.clip(u[j] + sgn * step, 0.0, 1.0)) for sgn in (-1.0, 1.0)]
    lv = min(int(u[j] * n), n - 1)
    return [(k + 0.5) / n for k in (lv - 1, lv + 1) if 0 <= k < n]


def _neighbours(space: DesignSpace, u: np.ndarray, step: float,
                two_axes: bool = False) -> np.ndarray:
    """Points one move away from ``u`` along one axis (or along two axes at once): a move
    is one level on a discrete axis, ``step`` on a continuous one."""
    d = space.num_dims
    out = []
    for j in range(d):
        for a in _moves(space, u, step, j):
            if not two_axes:
                v = u.copy()
                v[j] = a
                out.append(v)
                continue
            for k in range(j + 1, d):
                for b in _moves(space, u, step, k):
                    v = u.copy()
                    v[j], v[k] = a, b
                    out.append(v)
    return np.array(out).reshape(-1, d)
