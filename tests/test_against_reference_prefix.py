"""Prefix caching and KV tiers: the JAX simulator against the reference oracle.

Random lanes as in ``test_against_reference`` plus block-hash workloads (shared-prefix
groups whose lists run into the output tokens, so multi-turn-like reuse happens too),
a small KV cache that forces HBM evictions, two lower tiers with random capacities (0
included), bandwidths, latencies, links, integer eviction weights and overlap. Every
count must be identical; times, bytes and transfer totals equal to 1e-6 relative.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxsim import params as P
from jaxsim import prefix, simulate_batch
from jaxsim import status as st_bits
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, stack_workloads, to_workload
from tests.helpers import lane_params, oracle_config, oracle_workload
from tests.reference.event_sim import simulate_reference
from tests.test_against_reference import R_MAX, S_MAX, compare_lane, random_case

T = 3


def random_hashes(rng, trace: Trace) -> Trace:
    """Shared-prefix groups: request i of group g has ids g's prefix then private ids."""
    U = int(rng.choice([8, 16]))
    n = len(trace)
    groups = int(rng.integers(1, 4))
    prefix_len = [int(rng.integers(0, 6)) for _ in range(groups)]
    nxt = 1000
    lists = []
    for i in range(n):
        g = int(rng.integers(groups))
        total = (int(trace.prompt_tokens[i]) + int(trace.output_tokens[i])) // U
        k = min(prefix_len[g], total)
        ids = [100 * g + j for j in range(k)]
        if rng.random() < 0.3 and lists:  # a "next turn" of an earlier request
            prev = lists[int(rng.integers(len(lists)))]
            ids = list(prev[:total])
        while len(ids) < total:
            ids.append(nxt)
            nxt += 1
        lists.append(ids)
    return Trace(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, trace.name,
                 lists, U)


def random_cache(rng) -> P.CacheParams:
    def pick(vals, k=T):
        return [float(rng.choice(vals)) for _ in range(k)]

    caps = [0] + [int(rng.choice([0, 0, 1, 2, 4, 16, 64])) for _ in range(T - 1)]
    return P.CacheParams(
        enable=int(rng.random() < 0.9),
        capacity_blocks=caps,
        read_bps=pick([1e9, 1e11, 1e13, 1e15]),
        write_bps=pick([1e9, 1e12, 1e15]),
        latency_s=pick([0.0, 1e-6, 1e-3]),
        link_id=[0] + [int(rng.integers(0, 2)) for _ in range(T - 1)],
        link_bps=pick([1e10, 1e13, 1e16]),
        w_recency=float(rng.choice([1.0, 1.0, 0.0, 2.0])),
        w_frequency=float(rng.choice([0.0, 0.0, 1.0, 3.0])),
        w_depth=float(rng.choice([0.0, 0.0, 1.0])),
        load_overlap=float(rng.choice([0.0, 0.5, 1.0])),
        w_admission=float(rng.choice([0.0, 0.0, 1.0, 3.0, 100.0])),
        admission_window=int(rng.choice([1, 2, 4, 8])),
        static_power_w=[0.0] + pick([0.0, 5.0, 8.0], T - 1),
        energy_pj_per_bit=[0.0] + pick([0.0, 6.5, 206.0], T - 1),
        swap=int(rng.random() < 0.5), prefetch=int(rng.random() < 0.5),
    )


def oracle_cache_config(cp: P.CacheParams) -> dict:
    f = lambda x: [float(v) for v in np.asarray(x)[1:]]  # noqa: E731
    return {
        "enable_prefix_caching": bool(int(cp.enable)),
        "tier_capacity_blocks": [int(v) for v in np.asarray(cp.capacity_blocks)[1:]],
        "tier_read_bw": f(cp.read_bps),
        "tier_write_bw": f(cp.write_bps),
        "tier_latency_s": f(cp.latency_s),
        "tier_link": [int(v) for v in np.asarray(cp.link_id)[1:]],
        "tier_link_bw": [float(v) for v in np.asarray(cp.link_bps)],
        "w_rec": float(cp.w_recency),
        "w_freq": float(cp.w_frequency),
        "w_depth": float(cp.w_depth),
        "load_overlap": float(cp.load_overlap),
        "w_adm": float(cp.w_admission),
        "adm_window": int(cp.admission_window),
        "tier_static_power_w": f(cp.static_power_w),
        "tier_energy_pj_per_bit": f(cp.energy_pj_per_bit),
        "swap": bool(int(cp.swap)),
        "prefetch": bool(int(cp.prefetch)),
    }


def fractional_weights(rng, cp: P.CacheParams) -> P.CacheParams:
    """The lane's weights times factors that are not exact in binary (0.3, 1/3, ...):
    the same factor for all three eviction weights in half the lanes (the same policy,
    so equal scores must still tie), one each in the other half."""
    f = [0.3, 1 / 3, 0.7, 0.1, 0.01]
    a = [float(rng.choice(f))] * 3 if rng.random() < 0.5 else [float(rng.choice(f))
                                                                for _ in range(3)]
    return dataclasses.replace(
        cp, w_recency=cp.w_recency * a[0], w_frequency=cp.w_frequency * a[1],
        w_depth=cp.w_depth * a[2], w_admission=cp.w_admission * float(rng.choice(f)))


def prefix_inputs(seed: int, n: int, macro: int = 0, max_output: int = 24,
                  fractional: bool = False, override=None):
    """``n`` random lanes with prefix caching and tiers: (cases, shape, params, workload).
    With ``macro > 0`` the shape has event skipping (§6) and no prefetch (the lanes'
    ``prefetch`` is turned off: skipping is not used with prefetch compiled in). With
    ``fractional`` the weights are scaled by :func:`fractional_weights` (from a stream of
    their own: the lanes are otherwise those of the same seed). ``override(i, cfg)``
    may change lane i's configuration dict (in place)."""
    rng = np.random.default_rng(seed)
    frac_rng = np.random.default_rng([seed, 1])
    cases = []
    for i in range(n):
        trace, cfg = random_case(rng)
        if override is not None:
            override(i, cfg)
        # shorter outputs than the base oracle test: fewer decode iterations per lane
        trace = Trace(trace.arrival_s, trace.prompt_tokens,
                      np.minimum(trace.output_tokens, max_output), trace.name)
        trace = random_hashes(rng, trace)
        cp = random_cache(rng)
        if fractional:
            cp = fractional_weights(frac_rng, cp)
        if macro:
            cp = dataclasses.replace(cp, prefetch=0)
        cases.append((trace, cfg, cp))
    lanes = [lane_params(c, t) for t, c, _ in cases]
    lanes = [P.SimParams(model=p.model, hardware=p.hardware, scheduler=p.scheduler,
                         cost=p.cost, ttft_slo_s=p.ttft_slo_s, tpot_slo_s=p.tpot_slo_s,
                         status0=p.status0, cache=cp)
             for p, (_, _, cp) in zip(lanes, cases, strict=True)]
    wls = [to_workload(t, R_MAX) for t, _, _ in cases]
    wl = stack_workloads(wls)
    U = int(max(int(w.num_hash_ids) for w in wls))
    K = max(prefix.table_size(
        np.asarray(p.scheduler.num_gpu_blocks), np.asarray(p.scheduler.block_size),
        np.asarray(p.scheduler.max_num_batched_tokens), np.asarray(p.cache.capacity_blocks),
        t.hash_block_tokens, S_MAX, 0, U) for p, (t, _, _) in zip(lanes, cases, strict=True))
    # S_MAX + 8 rows: the largest admission window (8) fits beside 32 running requests
    shape = SimShape(max_requests=R_MAX, max_slots=S_MAX + 8, chunk_iterations=256,
                     num_tiers=T, cache_entries=max(K, 1), hash_space=max(U, 1),
                     prefetch=not macro, macro_iterations=macro)
    return cases, shape, P.stack(lanes), wl


def run_prefix_cases(seed: int, n: int, max_iterations=None, **kw):
    """``prefix_inputs`` simulated, and the reference's results."""
    cases, shape, params, wl = prefix_inputs(seed, n, **kw)
    lanes = [P.index(params, i) for i in range(n)]
    res = simulate_batch(shape, params, wl, max_iterations=max_iterations)
    refs = []
    for (t, _, cp), p in zip(cases, lanes, strict=True):
        w = oracle_workload(t)
        w["hash_ids"] = t.hash_ids
        w["hash_block_tokens"] = t.hash_block_tokens
        refs.append(simulate_reference(w, {**oracle_config(p), **oracle_cache_config(cp)},
                                       max_iterations=max_iterations))
    return cases, res, refs


def _close(a, b, rtol=1e-6, atol=1e-9):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.all((np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= atol + rtol * np.abs(b))))


def compare_cache(i, res, ref):
    errors = []
    st, m = res.state, res.metrics
    if int(res.status[i]) & st_bits.INFEASIBLE:
        return errors
    hits = np.asarray(st.hit_tok_hi[i], np.float64) + np.asarray(st.hit_tok_lo[i])
    if not np.array_equal(hits, np.asarray(ref["hit_tokens_by_tier"], np.float64)):
        errors.append(f"hit tokens {hits} vs ref {ref['hit_tokens_by_tier']}")
    adm = float(st.adm_tok_hi[i]) + float(st.adm_tok_lo[i])
    if adm != ref["admitted_prompt_tokens"]:
        errors.append(f"admitted prompt tokens {adm} vs ref {ref['admitted_prompt_tokens']}")
    if not _close(m["prefix_hit_rate"][i], ref["prefix_hit_rate"], rtol=1e-6):
        errors.append(f"prefix_hit_rate {m['prefix_hit_rate'][i]} vs {ref['prefix_hit_rate']}")
    for name, key in (("read", "bytes_read_by_tier"), ("write", "bytes_written_by_tier")):
        got = np.asarray(getattr(st, f"{name}_hi")[i], np.float64) + np.asarray(
            getattr(st, f"{name}_lo")[i])
        if not _close(got, ref[key], rtol=1e-6):
            errors.append(f"{key} {got} vs ref {ref[key]}")
    for key in ("xfer_exposed_s", "xfer_hidden_s"):
        # exposed time is a difference of millisecond-scale float32 times: one ulp of
        # those is about 1e-10 s (1.0e-10 seen on an exposed 7.3 us)
        if not _close(m[key][i], ref[key], rtol=1e-5, atol=1e-9):
            errors.append(f"{key} {m[key][i]} vs ref {ref[key]}")
    done = np.asarray(ref["completed"], bool)
    n = len(done)
    load = np.asarray(st.load_s[i])[:n]
    if not _close(np.where(done, load, np.nan), np.where(done, ref["load_s"], np.nan),
                  rtol=1e-5, atol=1e-9):
        errors.append(f"load_s {load} vs ref {ref['load_s']}")
    # the prefill part is TTFT - queueing - load of float32 per-request values (README,
    # Known limits): each of TTFT and queueing is off by up to half an ulp, 6e-8 of its
    # size, which under long queues is more than 1e-5 of the difference (1.2e-5 seen:
    # 22.2 ms of prefill behind seconds of queueing)
    ttft_ref = np.asarray(ref["ttft_s"], np.float64)[done]
    prefill_atol = 1.2e-7 * (float(np.max(ttft_ref)) if ttft_ref.size else 0.0)
    for key in ("ttft_load_mean_s", "ttft_load_p99_s", "ttft_prefill_mean_s",
                *(k for k in ref["metrics"] if k.startswith("energy_"))):
        atol = 1e-9 + (prefill_atol if key == "ttft_prefill_mean_s" else 0.0)
        if not _close(m[key][i], ref["metrics"][key], rtol=1e-5, atol=atol):
            errors.append(f"{key} {m[key][i]} vs ref {ref['metrics'][key]}")
    for key in ("swaps", "prefetched_blocks"):
        if int(m[key][i]) != int(ref["metrics"][key]):
            errors.append(f"{key} {m[key][i]} vs ref {ref['metrics'][key]}")
    peaks = np.asarray(st.peak_entries[i])
    if not np.array_equal(peaks, np.asarray(ref["peak_entries_by_tier"])):
        errors.append(f"peak entries {peaks} vs ref {ref['peak_entries_by_tier']}")
    if int(res.status[i]) & st_bits.OVERFLOW_CACHE:
        errors.append("unexpected overflow_cache_table")
    return errors


def _check(seed, n, max_iterations=None, **kw):
    cases, res, refs = run_prefix_cases(seed, n, max_iterations, **kw)
    failures = []
    for i, ((t, cfg, _), ref) in enumerate(zip(cases, refs, strict=True)):
        errs = compare_lane(i, t, res, ref) + compare_cache(i, res, ref)
        if errs:
            failures.append(f"lane {i} ({cfg}): " + "; ".join(errs[:4]))
    assert not failures, f"{len(failures)} of {n} lanes differ:\n" + "\n".join(failures[:8])
    return cases, refs, res


def _assert_coverage(cases, refs, hit, lower, written, exposed, jumped, swapped, prefetched):
    """The lanes exercise the interesting paths at least this many times each."""
    got = {
        "hit": sum(sum(r["hit_tokens_by_tier"]) > 0 for r in refs),
        "lower": sum(sum(r["hit_tokens_by_tier"][1:]) > 0 for r in refs),
        "written": sum(sum(r["bytes_written_by_tier"]) > 0 for r in refs),
        "exposed": sum(r["xfer_exposed_s"] > 0 for r in refs),
        # §5.8: a request with a cached prefix was admitted ahead of an older one
        "jumped": sum(_jumped(t, r) for (t, _, _), r in zip(cases, refs, strict=True)),
        # §5.10 / §5.11: swap-outs and prefetches
        "swapped": sum(r["metrics"]["swaps"] > 0 for r in refs),
        "prefetched": sum(r["metrics"]["prefetched_blocks"] > 0 for r in refs),
    }
    want = {"hit": hit, "lower": lower, "written": written, "exposed": exposed,
            "jumped": jumped, "swapped": swapped, "prefetched": prefetched}
    short = {k: (got[k], want[k]) for k in want if got[k] < want[k]}
    assert not short, f"paths exercised too rarely (got, want): {short}"


def test_prefix_oracle__random_lanes_match(xla_defaults):
    # the first 60 lanes of the slow test below (the default suite's largest test: 100
    # lanes took 73 s from a cold compile cache on 2 cores; 60 still take every path)
    cases, refs, _ = _check(20261121, 60)
    _assert_coverage(cases, refs, hit=30, lower=5, written=15, exposed=5, jumped=4,
                     swapped=2, prefetched=2)


# about 3 minutes, not run by CI (its time budget); 60 of its lanes are in the default suite
@pytest.mark.extended
def test_prefix_oracle__many_random_lanes_match():
    cases, refs, _ = _check(20261121, 220)
    _assert_coverage(cases, refs, hit=60, lower=10, written=20, exposed=5, jumped=5,
                     swapped=5, prefetched=5)


@pytest.mark.slow
def test_prefix_oracle__fractional_weights_match():
    """Weights such as 0.3 round in float32, and a multiply-add fused by XLA rounded
    them differently from the reference: mathematically equal scores were ordered by
    rounding noise (1 of 7 random seeds differed). Scores are compared exactly now."""
    cases, refs, _ = _check(20261124, 120, fractional=True)
    _assert_coverage(cases, refs, hit=30, lower=5, written=10, exposed=3, jumped=3,
                     swapped=2, prefetched=2)


def _skipping_matches_stepping_and_the_oracle(n: int):
    """Event skipping (§6) with the prefix cache: every lane matches the reference, and
    the final cache table (last use, ids, tiers, hits, depths, the id map) equals
    per-iteration stepping's exactly; the last-use times of requests that finish inside
    a decode run rarely change a metric, so the table is compared directly."""
    cases, refs, res = _check(20261122, n, macro=16, max_output=64)
    _, shape, params, wl = prefix_inputs(20261122, n, macro=16, max_output=64)
    stepped = simulate_batch(dataclasses.replace(shape, macro_iterations=0), params, wl)
    for f in ("e_last", "e_id", "e_tier", "e_hits", "e_depth", "loc"):
        a = np.asarray(getattr(res.state, f)).reshape(n, -1)
        b = np.asarray(getattr(stepped.state, f)).reshape(n, -1)
        diff = np.flatnonzero(np.any(a != b, axis=1))
        assert diff.size == 0, f"{f} differs from stepping in lanes {diff[:10]}"
    steps, iters = (np.asarray(res.metrics[k]) for k in ("steps", "iterations"))
    assert np.array_equal(iters, np.asarray(stepped.metrics["iterations"]))
    # decode runs were taken in most lanes, and the cache was exercised
    assert np.sum(steps < iters) >= n // 2, (np.sum(steps < iters), n)
    assert np.sum(steps) < 0.85 * np.sum(iters)
    assert sum(sum(r["hit_tokens_by_tier"]) > 0 for r in refs) >= n // 4
    assert sum(sum(r["bytes_written_by_tier"]) > 0 for r in refs) >= n // 10


@pytest.mark.slow  # two more compiled shapes: the default suite keeps under 10 min
def test_prefix_oracle__event_skipping_matches_stepping_and_the_oracle():
    _skipping_matches_stepping_and_the_oracle(20)


# about 4 minutes, not run by CI (its time budget); 20 lanes run in the slow step
@pytest.mark.extended
def test_prefix_oracle__event_skipping_many_lanes():
    _skipping_matches_stepping_and_the_oracle(100)


def _jumped(trace: Trace, ref) -> bool:
    """Some request was first admitted before a request that arrived earlier."""
    a = np.asarray(ref["admitted_s"], np.float64)[np.argsort(trace.arrival_s, kind="stable")]
    a = a[~np.isnan(a)]
    return bool(np.any(a[1:] < np.maximum.accumulate(a)[:-1]))
