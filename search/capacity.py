"""Capacity search: the highest arrival rate that meets the SLOs, for every configuration
at once.

Vidur-Search bisects the rate of one configuration at a time. Here every configuration
keeps its own bracket ``[lo, hi]`` and each round simulates all of them together at
their own midpoints (geometric, since capacity spans orders of magnitude), so ``rounds``
compiled batch runs find every capacity to a ratio of ``(hi0 / lo0) ** (1 / 2**rounds)``.

The workload keeps its seed while the rate changes: a Poisson trace at rate ``r`` is the
unit-rate trace with arrival times divided by ``r`` (and a trace file is rescaled the same
way), so the comparison between rates uses common random numbers.

A finite trace can meet an SLO at a rate the configuration cannot sustain: when its
arrivals end before the first requests finish, every request is admitted at once and the
overload never shows as queueing. So each capacity comes with ``steady``: whether the
trace's arrivals at that rate span at least ``STEADY_LIFETIMES`` mean request lifetimes
(E2E), and a warning names the configurations where they do not. Llama-3.1-8B on one
H100, 1,024/256 tokens, TTFT p99 <= 0.5 s, TPOT p99 <= 50 ms: 200 requests gave 39.3
req/s (arrivals spanning 0.8 lifetimes), 500 gave 24.9 (2.5), 1,000 gave 20.5 (6.0),
2,000 and 4,000 gave 20.2 and 19.9 (10.8 and 23.5).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxsim import config as config_mod
from search import objectives as ob
from search import runner
from search.space import _get_key

#: A capacity counts as steady when the trace's arrivals at that rate span at least this
#: many mean request lifetimes (E2E): the run then spends most of its time in steady state.
STEADY_LIFETIMES = 5.0


class CapacityWarning(UserWarning):
    """A capacity found on a trace too short to reach steady state at that rate."""


@dataclasses.dataclass
class CapacityResult:
    """Per configuration (arrays of length N).

    Attributes:
        capacity_rps: highest rate found that meets the SLOs (the bracket's low end);
            NaN when even ``rate_lo`` misses them.
        upper_rps: lowest rate found that misses them (``inf`` when ``rate_hi`` meets).
        status: 0 found inside the range; 1 ``rate_hi`` still meets the SLOs (capacity is
            at least ``rate_hi``); 2 ``rate_lo`` already misses them (or the lane is
            infeasible).
        metrics: results at ``capacity_rps`` (NaN rows where status is 2).
        span_s: the trace's arrival span (last arrival minus first) at ``capacity_rps``
            (NaN where status is 2).
        steady: ``span_s >= STEADY_LIFETIMES * e2e_mean_s`` at ``capacity_rps``; False
            where status is 2. Where it is False the trace ended before the run reached
            steady state and the capacity may be overstated: use more requests.
        rounds, simulations: bisection rounds run and configurations simulated (each
            of ``num_replicas`` lanes).
    """

    capacity_rps: np.ndarray
    upper_rps: np.ndarray
    status: np.ndarray
    metrics: dict[str, np.ndarray]
    span_s: np.ndarray
    steady: np.ndarray
    rounds: int
    simulations: int


def _with_rate(cfg: Mapping, rate: float) -> dict:
    c = copy.deepcopy(dict(cfg))
    c["workload"] = {**c["workload"], "rate": float(rate)}
    return c


def capacity_search(cfgs: Sequence[Mapping], slo: Mapping[str, float],
                    rate_lo: float = 0.25, rate_hi: float = 64.0, rounds: int = 8,
                    chunk_size: int | None = None, slots: int | None = None,
                    max_iterations: int | None = None) -> CapacityResult:
    """Bisect the arrival rate of every configuration at once.

    Args:
        cfgs: configurations (partial dicts); the workload must have a rate
            (``poisson``, ``gamma``, a trace file, which is rescaled, or ``servegen``,
            whose record's mean is scaled to it).
        slo: bounds on metric columns, as in :mod:`search.objectives`
            (e.g. ``{"ttft_p99_s": 1.0, "tpot_p99_s": 0.05}`` or
            ``["ttft_p99_s<=1.0", "tpot_p99_s<=0.05"]``); assumed monotone: met at low
            rates, missed at high ones.
        rate_lo, rate_hi: the search range, requests/s.
        rounds: bisection rounds after the two end checks.
        chunk_size: configurations per compiled call, each of ``num_replicas`` lanes
            (default: all, up to 1024 lanes).
        slots: initial slot-table rows.
        max_iterations: per-lane iteration limit (default: the simulator's).
    """
    for name, v in (("rate_lo", rate_lo), ("rate_hi", rate_hi)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not (
                np.isfinite(v)):
            raise ValueError(f"{name}: {v!r} must be a finite number of requests/s")
    if not 0 < rate_lo < rate_hi:
        raise ValueError(f"rate_lo={rate_lo}, rate_hi={rate_hi}: need 0 < rate_lo < rate_hi")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds: {rounds!r} must be an integer >= 0")
    for name, v in (("chunk_size", chunk_size), ("slots", slots)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer)
                              or v < 1):
            raise ValueError(f"{name}: {v!r} must be an integer >= 1 (or None: the default)")
    # the bounds (a mapping, METRIC<=VALUE strings or one such string), names checked now
    # so a misspelt metric does not wait for the first simulations
    slo = ob.checked_slo(slo)
    for k in slo:
        if k.removeprefix("min_") == "cost_per_mtok":  # the one objective needing prices
            raise ob.ObjectiveError(f"slo.{k}: capacity_search takes no GPU prices; bound "
                                    "the metrics it simulates (ttft_p99_s, tpot_p99_s, ...) "
                                    "and rank by cost afterwards")
    full = []
    for i, c in enumerate(cfgs):
        try:
            v = config_mod.validate(c)
        except config_mod.ConfigError as e:
            raise config_mod.ConfigError(f"configuration {i}: {e}") from None
        if v["disaggregation"]["enabled"]:
            raise config_mod.ConfigError(
                f"configuration {i}: disaggregation.enabled: true is simulated by "
                "jaxsim.api.run and jaxsim simulate; capacity_search does not search "
                "disaggregated deployments")
        if v["workload"]["kind"] == "all_at_once":
            raise config_mod.ConfigError(f"configuration {i}: workload.kind: all_at_once has "
                                         "no arrival rate to search")
        full.append(v)
    N = len(full)
    if N == 0:
        raise ValueError("capacity_search: no configurations")
    n_dev = len(jax.local_devices())
    if chunk_size is not None and chunk_size % n_dev:
        raise ValueError(f"chunk_size: {chunk_size} must be a multiple of the {n_dev} local "
                         "devices the lanes are split over")
    P = max(int(c["num_replicas"]) for c in full)  # lanes per configuration
    B = chunk_size or min(-(-N // n_dev) * n_dev, max(n_dev, 1024 // P // n_dev * n_dev))
    R = max(runner._num_requests(_with_rate(c, rate_lo)) for c in full)
    max_seqs = max(int(c["max_num_seqs"]) for c in full)
    S = slots or min(max_seqs, 64)
    plan = runner.Plan(size=N, chunk_size=B, num_chunks=-(-N // B), slots=S,
                       max_slots=runner.max_slots_for(S, max_seqs), max_requests=R,
                       per_lane_workload=True, chunk_iterations=256, num_devices=n_dev,
                       replicas=P)
    traces = runner._TraceCache()
    sims = 0

    def evaluate(rates: np.ndarray) -> tuple[np.ndarray, dict]:
        nonlocal sims
        out: dict[str, list] = {}
        for c0 in range(0, N, B):
            idx = np.arange(c0, min(c0 + B, N))
            pad = np.concatenate([idx, np.full(B - idx.size, idx[-1])])
            batch = runner.batch_from_configs(
                [_with_rate(full[i], rates[i]) for i in pad], plan, traces=traces)
            m = runner.simulate_chunk(plan, batch, max_iterations=max_iterations)
            sims += idx.size
            for k, v in [*m.items(), *((k, batch.info[k]) for k in ("weights_gb", "kv_gb"))]:
                out.setdefault(k, []).append(np.asarray(v)[:idx.size])
        metrics = {k: np.concatenate(v) for k, v in out.items()}
        # the configuration's columns of a sweep's results, so a bound may use them too
        for k in runner.RESULT_KEYS:
            if k not in metrics and k not in ("model", "gpu", "dtype", "scheduler"):
                metrics[k] = np.array([_get_key(c, k) for c in full])
        metrics["workload.rate"] = np.asarray(rates, np.float64)
        return ob.feasible(metrics, slo), metrics

    lo = np.full(N, float(rate_lo))
    hi = np.full(N, float(rate_hi))
    ok_hi, m_hi = evaluate(hi)
    ok_lo, m_lo = evaluate(lo)
    best = {k: np.where(ok_hi, m_hi[k], m_lo[k]) for k in m_lo}
    for _ in range(rounds):
        mid = np.sqrt(lo * hi)
        ok, m = evaluate(mid)
        upd = ok & ok_lo & ~ok_hi
        for k in best:
            best[k] = np.where(upd, m[k], best[k])
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    odd = np.flatnonzero(ok_hi & ~ok_lo)
    if odd.size:
        warnings.warn(
            f"capacity_search: configuration(s) {odd.tolist()[:20]}"
            f"{' ...' if odd.size > 20 else ''} meet the SLOs at rate_hi={rate_hi:g} but "
            f"miss them at rate_lo={rate_lo:g}: the SLOs are not monotone in the rate (a "
            "lower bound such as a minimum throughput fails at low rates), so the "
            "bisection does not apply; their status is 1 (rate_hi meets)", CapacityWarning,
            stacklevel=2)
    status = np.where(ok_hi, 1, np.where(ok_lo, 0, 2)).astype(np.int32)
    capacity = np.where(ok_hi, rate_hi, np.where(ok_lo, lo, np.nan))
    upper = np.where(ok_hi, np.inf, np.where(ok_lo, hi, rate_lo))
    for k in best:
        if best[k].dtype.kind == "f":
            best[k] = np.where(status == 2, np.nan, best[k])
    span = np.full(N, np.nan)
    for i in np.flatnonzero(status != 2):
        arr = np.asarray(traces.get(_with_rate(full[i], capacity[i])).arrival_s)
        span[i] = float(arr.max() - arr.min()) if arr.size else 0.0
    with np.errstate(invalid="ignore"):
        steady = (status != 2) & (span >= STEADY_LIFETIMES * best["e2e_mean_s"])
    short = np.flatnonzero((status != 2) & ~steady)
    if short.size:
        ex = short[0]
        warnings.warn(
            f"capacity_search: configuration(s) {short.tolist()[:20]}"
            f"{' ...' if short.size > 20 else ''}: at the capacity found the trace's "
            f"arrivals span fewer than {STEADY_LIFETIMES:g} mean request lifetimes "
            f"(configuration {ex}: {capacity[ex]:.4g} req/s, arrivals over "
            f"{span[ex]:.3g} s, E2E mean {best['e2e_mean_s'][ex]:.3g} s), so the run ends "
            "before steady state and the capacity may be overstated; give the workload "
            "more requests (CapacityResult.steady marks them)", CapacityWarning,
            stacklevel=2)
    return CapacityResult(capacity_rps=capacity, upper_rps=upper, status=status,
                          metrics=best, span_s=span, steady=steady, rounds=rounds,
                          simulations=sims)
