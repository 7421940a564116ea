"""CMA-ES over the unit cube, with a margin for integer and categorical axes.

The covariance matrix adaptation evolution strategy (CMA-ES) samples a population from
``N(m, sigma^2 C)``, ranks it and moves the mean towards the better points while learning
the step size ``sigma`` (cumulative step-size adaptation) and the covariance ``C``
(rank-one and rank-mu updates). Defaults follow N. Hansen, "The CMA Evolution Strategy: A
Tutorial", arXiv:1604.00772 (2016), with positive recombination weights only. The
reference implementation of that tutorial is pycma (github.com/CMA-ES/pycma); the
ask/init/tell shape follows evosax (STYLE §1.2, §3.10).

Search happens in ``u``-space, ``[0, 1]^d``, where a discrete axis with ``n`` levels decodes
to ``min(floor(u * n), n - 1)`` (see :mod:`search.space`). Three additions make plain CMA-ES
fit that space:

- **Box: reflection.** A sample outside ``[0, 1]`` is mirrored back (``-0.1 -> 0.1``,
  ``1.2 -> 0.8``, with period 2). Reflection keeps samples near the mean (the reflected
  point is never farther from an in-box mean, coordinate by coordinate) and puts no mass on
  the faces, unlike clipping. ``tell`` learns from the points it is given, i.e. the
  reflected ones; their steps are clipped to a Mahalanobis length of
  ``sqrt(d) + 2d/(d+2)`` as for injected solutions (N. Hansen, "Injecting External
  Solutions Into CMA-ES", arXiv:1110.4181), so a repaired point cannot blow up ``C``. With
  positive weights and ``c_mean <= 1`` the new mean is a convex combination of in-box points,
  so it stays in the box.
- **Discrete axes: margin.** On a discrete axis the fitness is flat inside a level, so
  plain CMA-ES shrinks the marginal variance until the axis freezes on one level. Following
  the idea of CMA-ES with Margin (R. Hamano, S. Saito, M. Nomura, S. Shirakawa, GECCO 2022,
  arXiv:2205.13482), sampling uses ``N(m, sigma^2 A C A)`` with a diagonal ``A >= 1`` chosen
  each generation so that every discrete axis keeps a marginal standard deviation of at
  least ``(1 / n) / (2 z)``, ``z = Phi^-1(1 - alpha / 2)``: even from the centre of a level
  of width ``1 / n`` a sample leaves that level with probability at least ``alpha``
  (default ``1 / (d * population_size)``). The updates of ``C``, ``p_c`` and ``p_sigma`` use
  ``A^-1 (x - m) / sigma``, so ``C`` keeps learning the unscaled shape. This is the
  minimum-variance part of the margin only; the paper's mean correction is left out. At the
  faces of the cube reflection folds some of that mass back into the edge level.
- **Infeasible points.** ``NaN`` and ``-inf`` fitness count as ``+inf``; ``+inf`` ranks
  last (stable order among ties), so it is never the best. If a whole generation is
  infeasible, only ``sigma`` changes (times ``infeasible_sigma_factor``) so the search
  widens until it finds feasible points.

Numerical safety: ``C`` is symmetrised and eigendecomposed every generation (fine for
``d <= 50``), its eigenvalues are floored at ``max / max_condition``, and ``C`` is rescaled
to a largest eigenvalue of 1 with the scale moved into ``sigma`` (and ``p_c``), which leaves
the distribution and the dynamics unchanged. So ``sigma`` is the standard deviation along
the longest principal axis (before the margin), and ``[sigma_min, sigma_max]`` bounds it.

``init``, ``ask`` and ``tell`` are ``eqx.filter_jit``-ed methods of a frozen
``eqx.Module`` whose fields are all static (hashed by value, so equal strategies share the
compile cache; STYLE P3). Everything that is traced lives in :class:`CMAESParams`, so the
hyperparameters can be vmapped. Fitness is evaluated on the host between ``ask`` and
``tell``; :func:`minimize` is that loop.

Example:
    >>> import jax, jax.numpy as jnp
    >>> strategy = CMAES(num_dims=3, levels=(0, 0, 5))
    >>> out = minimize(lambda u: ((u - 0.3) ** 2).sum(axis=1), strategy,
    ...                jax.random.key(0), num_generations=50)
    >>> out["best_u"].shape
    (3,)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

__all__ = ["CMAES", "CMAESParams", "CMAESState", "minimize"]

_DTYPE = jnp.float32
_TINY = 1e-30


class CMAESParams(eqx.Module):
    """Traced hyperparameters (vmappable). Build with :meth:`CMAES.default_params`.

    Attributes:
        mean_init: float32 [d], initial mean in ``u``-space.
        sigma_init: float32 [], initial step size (``u`` units).
        weights: float32 [population_size], recombination weights by rank (best first);
            non-negative, summing to 1.
        c_mean: float32 [], learning rate of the mean (1 in the tutorial).
        c_sigma: float32 [], cumulation rate of the step-size path ``p_sigma``.
        d_sigma: float32 [], damping of the step-size update.
        c_c: float32 [], cumulation rate of the covariance path ``p_c``.
        c_1: float32 [], rank-one learning rate.
        c_mu: float32 [], rank-mu learning rate.
        margin_alpha: float32 [], minimum probability that a discrete axis leaves its level
            (0 switches the margin off).
        sigma_min: float32 [], lower bound on ``sigma``.
        sigma_max: float32 [], upper bound on ``sigma``.
        max_condition: float32 [], bound on the condition number of ``C``.
        infeasible_sigma_factor: float32 [], ``sigma`` multiplier after a generation with
            no finite fitness.
    """

    mean_init: Float[Array, " d"]
    sigma_init: Float[Array, ""]
    weights: Float[Array, " L"]
    c_mean: Float[Array, ""]
    c_sigma: Float[Array, ""]
    d_sigma: Float[Array, ""]
    c_c: Float[Array, ""]
    c_1: Float[Array, ""]
    c_mu: Float[Array, ""]
    margin_alpha: Float[Array, ""]
    sigma_min: Float[Array, ""]
    sigma_max: Float[Array, ""]
    max_condition: Float[Array, ""]
    infeasible_sigma_factor: Float[Array, ""]


class CMAESState(eqx.Module):
    """Search state; every field has a fixed shape (d = num_dims).

    Attributes:
        mean: float32 [d], distribution mean, in ``[0, 1]^d``.
        sigma: float32 [], step size (std along the longest principal axis of ``C``).
        C: float32 [d, d], covariance shape, largest eigenvalue 1.
        B: float32 [d, d], eigenvectors of ``C`` (columns).
        D: float32 [d], square roots of the eigenvalues of ``C``.
        p_sigma: float32 [d], step-size evolution path (isotropic coordinates).
        p_c: float32 [d], covariance evolution path.
        generation: int32 [], number of ``tell`` calls so far.
        best_u: float32 [d], best point seen (``mean_init`` until a finite fitness).
        best_fitness: float32 [], its fitness (``+inf`` until a finite fitness).
    """

    # evolving distribution
    mean: Float[Array, " d"]
    sigma: Float[Array, ""]
    C: Float[Array, "d d"]
    B: Float[Array, "d d"]
    D: Float[Array, " d"]
    # evolution paths
    p_sigma: Float[Array, " d"]
    p_c: Float[Array, " d"]
    generation: Int[Array, ""]
    # best so far
    best_u: Float[Array, " d"]
    best_fitness: Float[Array, ""]


def _reflect(x: Float[Array, "L d"]) -> Float[Array, "L d"]:
    """Mirror into ``[0, 1]`` (a triangle wave of period 2)."""
    r = jnp.mod(x, 2.0)
    return jnp.clip(jnp.where(r > 1.0, 2.0 - r, r), 0.0, 1.0)


def _f32(x) -> Array:
    return jnp.asarray(x, dtype=_DTYPE)


class CMAES(eqx.Module):
    """CMA-ES in ``[0, 1]^d`` with a margin on discrete axes (see module docstring).

    Attributes:
        population_size: samples per generation (``lambda``).
        num_dims: ``d``.
        levels: per axis, 0 for continuous or ``n >= 2`` for ``n`` discrete levels.
    """

    population_size: int = eqx.field(static=True)
    num_dims: int = eqx.field(static=True)
    levels: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        num_dims: int,
        population_size: int | None = None,
        levels: Sequence[int] | None = None,
    ):
        """Build a strategy.

        Args:
            num_dims: number of design dimensions ``d >= 1``.
            population_size: ``lambda >= 2``; default ``4 + floor(3 ln d)`` (tutorial).
            levels: per axis, 0 (continuous) or ``n >= 2``; default all continuous.

        Raises:
            ValueError: on a bad size or level count.
        """
        num_dims = int(num_dims)
        if num_dims < 1:
            raise ValueError(f"num_dims must be >= 1, got {num_dims}")
        if population_size is None:
            population_size = 4 + int(math.floor(3 * math.log(num_dims)))
        population_size = int(population_size)
        if population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {population_size}")
        levels = (0,) * num_dims if levels is None else tuple(int(n) for n in levels)
        if len(levels) != num_dims:
            raise ValueError(f"levels has {len(levels)} entries, expected num_dims={num_dims}")
        bad = [n for n in levels if n != 0 and n < 2]
        if bad:
            raise ValueError(f"levels must be 0 (continuous) or >= 2, got {bad}")
        self.num_dims = num_dims
        self.population_size = population_size
        self.levels = levels

    @classmethod
    def from_space(cls, space: Any, population_size: int | None = None) -> CMAES:
        """Strategy for a design space (anything with ``num_dims`` and ``levels``)."""
        return cls(space.num_dims, population_size=population_size, levels=space.levels)

    # ---- static quantities (Python/numpy, evaluated at trace time) ----

    @property
    def _chi_n(self) -> float:
        """E||N(0, I_d)||, the tutorial's approximation."""
        d = self.num_dims
        return math.sqrt(d) * (1.0 - 1.0 / (4.0 * d) + 1.0 / (21.0 * d * d))

    @property
    def _max_step_norm(self) -> float:
        """Mahalanobis clip for repaired points (Hansen 2011, arXiv:1110.4181)."""
        d = self.num_dims
        return math.sqrt(d) + 2.0 * d / (d + 2.0)

    @property
    def _level_width(self) -> np.ndarray:
        """float32 [d]: ``1 / n`` on discrete axes, 0 on continuous ones."""
        return np.array([1.0 / n if n else 0.0 for n in self.levels], np.float32)

    def default_params(self) -> CMAESParams:
        """Tutorial defaults (Hansen 2016, Table 1) for this population size and dimension."""
        d, lam = self.num_dims, self.population_size
        raw = math.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))
        weights = np.maximum(raw, 0.0)
        weights = weights / weights.sum()
        mu_eff = 1.0 / float(np.sum(weights**2))
        c_sigma = (mu_eff + 2.0) / (d + mu_eff + 5.0)
        d_sigma = 1.0 + 2.0 * max(0.0, math.sqrt((mu_eff - 1.0) / (d + 1.0)) - 1.0) + c_sigma
        c_c = (4.0 + mu_eff / d) / (d + 4.0 + 2.0 * mu_eff / d)
        alpha_cov = 2.0
        c_1 = alpha_cov / ((d + 1.3) ** 2 + mu_eff)
        c_mu = min(
            1.0 - c_1,
            alpha_cov * (mu_eff - 2.0 + 1.0 / mu_eff) / ((d + 2.0) ** 2 + alpha_cov * mu_eff / 2),
        )
        return CMAESParams(
            mean_init=jnp.full((d,), 0.5, _DTYPE),
            sigma_init=_f32(0.3),
            weights=_f32(weights),
            c_mean=_f32(1.0),
            c_sigma=_f32(c_sigma),
            d_sigma=_f32(d_sigma),
            c_c=_f32(c_c),
            c_1=_f32(c_1),
            c_mu=_f32(max(c_mu, 0.0)),
            margin_alpha=_f32(1.0 / (d * lam)),
            sigma_min=_f32(1e-10),
            sigma_max=_f32(1.0),
            max_condition=_f32(1e12),
            infeasible_sigma_factor=_f32(1.5),
        )

    # ---- public, jitted entry points ----

    @eqx.filter_jit
    def init(self, key: PRNGKeyArray, params: CMAESParams) -> CMAESState:
        """Initial state (``key`` is unused; the start is ``params.mean_init``)."""
        return self._init(key, params)

    @eqx.filter_jit
    def ask(
        self, key: PRNGKeyArray, state: CMAESState, params: CMAESParams
    ) -> tuple[Float[Array, "L d"], CMAESState]:
        """Sample a population in ``[0, 1]^d``; the state is returned unchanged."""
        return self._ask(key, state, params)

    @eqx.filter_jit
    def tell(
        self,
        key: PRNGKeyArray,
        u_pop: Float[Array, "L d"],
        fitness: Float[Array, " L"],
        state: CMAESState,
        params: CMAESParams,
    ) -> tuple[CMAESState, dict[str, Array]]:
        """Update from the evaluated population (lower fitness is better).

        Args:
            key: unused (ties rank in population order).
            u_pop: float [L, d], the points that were evaluated.
            fitness: float [L]; ``+inf``, ``-inf`` and ``NaN`` mean infeasible.
            state: state from ``ask``.
            params: hyperparameters.

        Returns:
            The new state and a dict of scalar metrics: ``best_fitness`` (so far),
            ``generation_best_fitness``, ``num_finite``, ``sigma`` and ``axis_ratio``
            (``sqrt`` of the condition number of ``C``).
        """
        return self._tell(key, u_pop, fitness, state, params)

    def marginal_std(self, state: CMAESState, params: CMAESParams) -> Float[Array, " d"]:
        """Per-axis standard deviation of the sampling distribution, margin included."""
        scale = self._margin_scale(state.sigma, state.C, params)
        return state.sigma * scale * jnp.sqrt(jnp.diagonal(state.C))

    # ---- the algorithm ----

    def _margin_scale(
        self, sigma: Float[Array, ""], C: Float[Array, "d d"], params: CMAESParams
    ) -> Float[Array, " d"]:
        """Diagonal ``A``: lifts each discrete axis's marginal std to the margin minimum."""
        width = jnp.asarray(self._level_width)
        z = ndtri(1.0 - params.margin_alpha / 2.0)  # inf when alpha == 0: margin off
        std_min = width / (2.0 * z)
        std = sigma * jnp.sqrt(jnp.diagonal(C))
        return jnp.where(width > 0, jnp.maximum(1.0, std_min / jnp.maximum(std, _TINY)), 1.0)

    def _init(self, key: PRNGKeyArray, params: CMAESParams) -> CMAESState:
        del key
        d = self.num_dims
        mean = jnp.clip(_f32(params.mean_init), 0.0, 1.0)
        sigma = jnp.clip(_f32(params.sigma_init), params.sigma_min, params.sigma_max)
        return CMAESState(
            mean=mean,
            sigma=sigma,
            C=jnp.eye(d, dtype=_DTYPE),
            B=jnp.eye(d, dtype=_DTYPE),
            D=jnp.ones((d,), _DTYPE),
            p_sigma=jnp.zeros((d,), _DTYPE),
            p_c=jnp.zeros((d,), _DTYPE),
            generation=jnp.zeros((), jnp.int32),
            best_u=mean,
            best_fitness=jnp.full((), jnp.inf, _DTYPE),
        )

    def _ask(
        self, key: PRNGKeyArray, state: CMAESState, params: CMAESParams
    ) -> tuple[Float[Array, "L d"], CMAESState]:
        z = jax.random.normal(key, (self.population_size, self.num_dims), _DTYPE)
        y = (z * state.D[None, :]) @ state.B.T  # y ~ N(0, C)
        scale = self._margin_scale(state.sigma, state.C, params)
        x = state.mean[None, :] + (state.sigma * scale)[None, :] * y
        return _reflect(x), state

    def _tell(
        self,
        key: PRNGKeyArray,
        u_pop: Float[Array, "L d"],
        fitness: Float[Array, " L"],
        state: CMAESState,
        params: CMAESParams,
    ) -> tuple[CMAESState, dict[str, Array]]:
        del key
        d = self.num_dims
        u_pop = _f32(u_pop)
        fitness = _f32(fitness)
        fitness = jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)
        finite_mask: Bool[Array, " L"] = jnp.isfinite(fitness)
        any_finite = jnp.any(finite_mask)
        order = jnp.argsort(fitness, stable=True)
        u_sorted = u_pop[order]

        # Steps in C-space: y = A^-1 (x - m) / sigma, with Mahalanobis length clipped.
        scale = self._margin_scale(state.sigma, state.C, params)
        y = (u_sorted - state.mean[None, :]) / (state.sigma * scale)[None, :]
        z_eig = (y @ state.B) / state.D[None, :]  # D^-1 B^T y, per row
        norms = jnp.sqrt(jnp.sum(z_eig**2, axis=1))
        shrink = jnp.minimum(1.0, self._max_step_norm / jnp.maximum(norms, _TINY))
        y = y * shrink[:, None]
        z_eig = z_eig * shrink[:, None]

        w = params.weights
        mu_eff = 1.0 / jnp.sum(w**2)
        y_w = w @ y
        mean = state.mean + params.c_mean * state.sigma * scale * y_w
        mean = jnp.clip(mean, 0.0, 1.0)

        # Cumulative step-size adaptation (tutorial eqs. 43-44).
        c_s, c_c = params.c_sigma, params.c_c
        inv_sqrt_c_yw = state.B @ (w @ z_eig)  # C^-1/2 y_w
        p_sigma = (1.0 - c_s) * state.p_sigma + jnp.sqrt(c_s * (2.0 - c_s) * mu_eff) * (
            inv_sqrt_c_yw
        )
        norm_ps = jnp.linalg.norm(p_sigma)
        gen = (state.generation + 1).astype(_DTYPE)
        h_sigma = (
            norm_ps / jnp.sqrt(1.0 - (1.0 - c_s) ** (2.0 * gen))
            < (1.4 + 2.0 / (d + 1.0)) * self._chi_n
        ).astype(_DTYPE)
        sigma = state.sigma * jnp.exp(
            jnp.minimum(1.0, (c_s / params.d_sigma) * (norm_ps / self._chi_n - 1.0))
        )

        # Covariance: rank-one (with the h_sigma stall correction) plus rank-mu (eqs. 45-47).
        p_c = (1.0 - c_c) * state.p_c + h_sigma * jnp.sqrt(c_c * (2.0 - c_c) * mu_eff) * y_w
        delta_h = (1.0 - h_sigma) * c_c * (2.0 - c_c)
        rank_mu = (y * w[:, None]).T @ y
        C = (
            (1.0 + params.c_1 * delta_h - params.c_1 - params.c_mu * jnp.sum(w)) * state.C
            + params.c_1 * jnp.outer(p_c, p_c)
            + params.c_mu * rank_mu
        )
        C = 0.5 * (C + C.T)
        eig, B = jnp.linalg.eigh(C)
        eig_max = jnp.maximum(jnp.max(eig), _TINY)
        eig = jnp.clip(eig, eig_max / params.max_condition, eig_max) / eig_max
        # Move C's scale into sigma (and p_c, which is in the same units as y): the
        # distribution and every later update are unchanged.
        sigma = sigma * jnp.sqrt(eig_max)
        p_c = p_c / jnp.sqrt(eig_max)
        C = (B * eig[None, :]) @ B.T
        C = 0.5 * (C + C.T)
        sigma = jnp.clip(sigma, params.sigma_min, params.sigma_max)

        # A generation with no finite fitness carries no ranking: only widen the search.
        held_sigma = jnp.clip(
            state.sigma * params.infeasible_sigma_factor, params.sigma_min, params.sigma_max
        )

        def pick(new, old):
            return jnp.where(any_finite, new, old)

        gen_best_idx = order[0]
        gen_best = fitness[gen_best_idx]
        improved = gen_best < state.best_fitness
        new_state = CMAESState(
            mean=pick(mean, state.mean),
            sigma=pick(sigma, held_sigma),
            C=pick(C, state.C),
            B=pick(B, state.B),
            D=pick(jnp.sqrt(eig), state.D),
            p_sigma=pick(p_sigma, state.p_sigma),
            p_c=pick(p_c, state.p_c),
            generation=state.generation + 1,
            best_u=jnp.where(improved, u_pop[gen_best_idx], state.best_u),
            best_fitness=jnp.where(improved, gen_best, state.best_fitness),
        )
        metrics = {
            "best_fitness": new_state.best_fitness,
            "generation_best_fitness": gen_best,
            "num_finite": jnp.sum(finite_mask.astype(jnp.int32)),
            "sigma": new_state.sigma,
            "axis_ratio": jnp.max(new_state.D) / jnp.min(new_state.D),
        }
        return new_state, metrics


def minimize(
    f: Callable[[np.ndarray], Any],
    strategy: CMAES,
    key: PRNGKeyArray,
    num_generations: int,
    params: CMAESParams | None = None,
    callback: Callable[[int, CMAESState, dict[str, Array]], bool | None] | None = None,
    max_evals: int | None = None,
) -> dict[str, Any]:
    """Minimise ``f`` over ``[0, 1]^d`` with ask / host evaluation / tell.

    Args:
        f: host function, float32 numpy [L, d] -> fitness [L] (``inf``/``NaN`` = infeasible).
        strategy: the :class:`CMAES` strategy.
        key: PRNG key; the same key gives the same run.
        num_generations: maximum number of generations.
        params: hyperparameters; default ``strategy.default_params()``.
        callback: ``callback(generation, state, metrics)`` after each ``tell``; returning
            ``True`` stops the run.
        max_evals: evaluation budget; only whole generations run, so the count never
            exceeds it.

    Returns:
        Dict with ``best_u`` (float32 numpy [d]), ``best_fitness`` (float, ``inf`` if no
        feasible point was found), ``num_evals``, ``num_generations``,
        ``best_fitness_history`` (float32 numpy [num_generations], best so far after each
        generation) and ``state`` (the final :class:`CMAESState`).
    """
    if params is None:
        params = strategy.default_params()
    lam = strategy.population_size
    key, key_init = jax.random.split(key)
    state = strategy.init(key_init, params)
    history: list[Array] = []
    num_evals = 0
    for generation in range(int(num_generations)):
        if max_evals is not None and num_evals + lam > max_evals:
            break
        key, key_ask, key_tell = jax.random.split(key, 3)
        u_pop, state = strategy.ask(key_ask, state, params)
        fitness = np.asarray(f(np.asarray(u_pop)), dtype=np.float32).reshape(-1)
        if fitness.shape != (lam,):
            raise ValueError(f"f returned {fitness.shape[0]} values for {lam} points")
        num_evals += lam
        state, metrics = strategy.tell(key_tell, u_pop, jnp.asarray(fitness), state, params)
        history.append(metrics["best_fitness"])
        if callback is not None and callback(generation, state, metrics):
            break
    return {
        "best_u": np.asarray(state.best_u),
        "best_fitness": float(state.best_fitness),
        "num_evals": num_evals,
        "num_generations": len(history),
        "best_fitness_history": np.asarray(jnp.stack(history))
        if history
        else np.zeros((0,), np.float32),
        "state": state,
    }
