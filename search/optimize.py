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
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsim import status as st_bits
from search import objectives as ob
from search import runner
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
        evaluations: exact simulations spent.
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
        self.space, self.objective = space, objective
        self.slo, self.prices = dict(slo or {}), dict(prices or {})
        self.max_iterations = max_iterations
        self.traces = runner._TraceCache()
        self.evaluations = 0
        self._cache: dict[bytes, tuple[float, float, int]] = {}
        ob.derived({"tp": np.ones(1), "output_tps": np.ones(1), "goodput_rps": np.ones(1),
                    "gpu": np.array([space.base.get("gpu", "H100-SXM")]),
                    objective: np.ones(1)}, objective, self.prices)  # fail early

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
            cfgs = self.space.configs(u[pad])
            ok = self.space.constraint_mask(cfgs)
            batch = runner.batch_from_configs(cfgs, self.plan, ok, self.traces)
            m = runner.simulate_chunk(self.plan, batch, max_iterations=self.max_iterations)
            table = {k: np.asarray(v)[:len(part)] for k, v in m.items()}
            for k in ("tp", "gpu"):
                table[k] = np.array([c[k] for c in cfgs[:len(part)]])
            c = ob.costs(table, [self.objective], self.slo, self.prices)[:, 0]
            v = ob.derived(table, self.objective, self.prices)
            for j, i in enumerate(part):
                self._cache[keys[i]] = (float(c[j]), float(v[j]), int(table["status"][j]))
            self.evaluations += len(part)
        res = [self._cache[k] for k in keys]
        return (np.array([r[0] for r in res]), np.array([r[1] for r in res]),
                np.array([r[2] for r in res], np.int64))

    def result(self, u: np.ndarray, history: list[float]) -> SearchResult:
        c, v, s = self(u[None])
        return SearchResult(u=np.asarray(u), config=self.space.configs(u[None])[0],
                            cost=float(c[0]), value=float(v[0]), status=int(s[0]),
                            evaluations=self.evaluations, history=history)


def exhaustive(ev: Evaluator) -> SearchResult:
    """Every point of the space's grid (the reference optimum)."""
    sp = ev.space
    if sp.sampler != "grid":
        raise ValueError("exhaustive: the space must use the grid sampler")
    best_c, best_u, hist = np.inf, None, []
    for s in range(0, sp.size, ev.batch_size):
        u = sp.sample(np.arange(s, min(s + ev.batch_size, sp.size)))
        c, _, _ = ev(u)
        i = int(np.argmin(c))
        if best_u is None or c[i] < best_c:
            best_c, best_u = float(c[i]), u[i]
        hist.append(best_c)
    return ev.result(best_u, hist)


def cmaes_search(ev: Evaluator, max_evals: int, seed: int = 0,
                 population_size: int | None = None, sigma_init: float = 0.3) -> SearchResult:
    """CMA-ES with margin for discrete axes; at most ``max_evals`` new simulations."""
    strat = CMAES.from_space(ev.space, population_size=population_size)
    params = strat.default_params()
    params = eqx.tree_at(lambda p: p.sigma_init, params, jnp.float32(sigma_init))
    hist: list[float] = []
    best = {"c": np.inf, "u": None}
    start = ev.evaluations

    def f(u_pop):
        c, _, _ = ev(np.asarray(u_pop, np.float64))
        i = int(np.argmin(c))
        if best["u"] is None or c[i] < best["c"]:
            best["c"], best["u"] = float(c[i]), np.asarray(u_pop[i], np.float64)
        hist.append(best["c"])
        return c

    def stop(*_a, **_k):
        return ev.evaluations - start + strat.population_size > max_evals

    minimize(f, strat, jax.random.key(seed), num_generations=10**6, params=params,
             callback=stop)
    return ev.result(best["u"], hist)


def gradient_search(ev: Evaluator, max_evals: int, seed: int = 0, pairs: int = 8,
                    sigma: float = 0.08, learning_rate: float = 0.3,
                    u0: np.ndarray | None = None) -> SearchResult:
    """Adam on a Gaussian-smoothed relaxation of the objective (see module docstring)."""
    d = ev.space.num_dims
    rng = np.random.default_rng(seed)
    u_init = np.full(d, 0.5) if u0 is None else np.clip(np.asarray(u0, np.float64), 0.02, 0.98)
    z = jnp.asarray(np.log(u_init / (1.0 - u_init)), jnp.float32)
    opt = optax.adam(learning_rate)
    state = opt.init(z)
    hist: list[float] = []
    best = {"c": np.inf, "u": u_init}
    worst = {"c": 1.0}
    start = ev.evaluations

    while ev.evaluations - start + 2 * pairs <= max_evals:
        u = np.asarray(jax.nn.sigmoid(z), np.float64)
        eps = rng.standard_normal((pairs, d))
        pts = np.concatenate([u + sigma * eps, u - sigma * eps])
        pts = np.abs(pts)
        pts = np.where(pts > 1.0, 2.0 - pts, pts)  # reflect into the box
        c, _, _ = ev(pts)
        fin = np.isfinite(c)
        if fin.any():
            worst["c"] = max(worst["c"], float(np.max(np.abs(c[fin]))))
            i = int(np.argmin(np.where(fin, c, np.inf)))
            if c[i] < best["c"]:
                best["c"], best["u"] = float(c[i]), pts[i]
        pen = np.where(fin, c, 2.0 * worst["c"])
        g_u = ((pen[:pairs] - pen[pairs:])[:, None] * eps).mean(axis=0) / (2.0 * sigma)
        scale = np.std(pen) + 1e-12
        g_u = g_u / scale
        _, vjp = jax.vjp(jax.nn.sigmoid, z)
        (g_z,) = vjp(jnp.asarray(g_u, jnp.float32))
        upd, state = opt.update(g_z, state, z)
        z = optax.apply_updates(z, upd)
        hist.append(best["c"])
    # re-check: the final mean as well as the best sample, in the exact simulator
    u_fin = np.asarray(jax.nn.sigmoid(z), np.float64)
    c_fin, _, _ = ev(u_fin[None])
    if c_fin[0] < best["c"]:
        best["c"], best["u"] = float(c_fin[0]), u_fin
    return ev.result(best["u"], hist)
