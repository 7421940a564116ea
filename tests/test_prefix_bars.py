"""The memory-hierarchy bars: exact hit ratios on the Mooncake trace, LRU equal to a
plain-Python LRU, a zero-capacity tier equal to no tier, a lower-tier hit never slower
than a miss, and one compiled function for a sweep of tier capacities, bandwidths and
policy weights."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from jaxsim import api, traces
from jaxsim import sim as sim_mod
from jaxsim.sim import simulate_batch
from jaxsim.workload import Trace

U = 512


@pytest.fixture(scope="module")
def mooncake():
    return traces.bundled("mooncake_conversation_2k")


def sequential_prefill(tr: Trace, n: int, max_prompt: int) -> Trace:
    """The first n requests with prompt <= max_prompt, one every 1000 s, one output token
    each: every request finishes before the next arrives, so the cache sees the exact
    request sequence."""
    o = tr.order()
    keep = [i for i in o if tr.prompt_tokens[i] <= max_prompt][:n]
    return Trace(np.arange(len(keep)) * 1000.0, tr.prompt_tokens[keep],
                 np.ones(len(keep), np.int64), "mooncake-seq",
                 [tr.hash_ids[i] for i in keep], U)


def run(cfgs, trace, **kw):
    p = api.prepare(cfgs, trace, max_slots=4, **kw)
    return p, simulate_batch(p.shape, p.params, p.workload)


def hit_tokens(res, i):
    st = res.state
    return np.asarray(st.hit_tok_hi[i], np.float64) + np.asarray(st.hit_tok_lo[i])


BASE = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "max_num_batched_tokens": 8192,
        "max_num_seqs": 4, "enable_prefix_caching": True, "max_model_len": 32768}


@pytest.mark.slow  # long (29-30 s on 2 cores): runs in CI's slow step
def test_mooncake_unlimited_cache_hits_the_exact_bound(mooncake):
    tr = sequential_prefill(mooncake, 300, 32000)
    # independent bound: longest prefix of whole blocks seen in any earlier request
    seen: set[int] = set()
    bound = 0
    for p, ids in zip(tr.prompt_tokens, tr.hash_ids, strict=True):
        kmax = min(len(ids), (int(p) - 1) // U)
        k = 0
        while k < kmax and int(ids[k]) in seen:
            k += 1
        bound += k * U
        seen.update(int(x) for x in ids)
    assert bound > 0.1 * tr.prompt_tokens.sum()  # the trace really shares prefixes
    # HBM alone is far too small for the trace; DRAM holds every block ever seen
    cfg = {**BASE, "num_gpu_blocks": 4096, "tiers": "dram",
           "tier": {"dram": {"capacity_gb": 64e6 * len(seen) / 1e9 * 1.1}}}
    _, res = run([cfg], tr)
    assert res.lane(0)["status"] == "ok"
    got = hit_tokens(res, 0)
    assert got.sum() == bound
    assert got[1] > 0  # many of them came from DRAM
    assert res.metrics["prefix_hit_rate"][0] == pytest.approx(
        bound / tr.prompt_tokens.sum(), rel=1e-6)


def test_finite_lru_equals_plain_python_lru(mooncake):
    tr = sequential_prefill(mooncake, 200, 16000)
    for cap_blocks in (40, 96):
        # plain LRU over the block sequence: a request's blocks are used deepest first,
        # so its first block is the most recent (vLLM frees a request tail first)
        lru: OrderedDict[int, None] = OrderedDict()
        expect = 0
        for p, ids in zip(tr.prompt_tokens, tr.hash_ids, strict=True):
            kmax = min(len(ids), (int(p) - 1) // U)
            k = 0
            while k < kmax and int(ids[k]) in lru:
                k += 1
            expect += k * U
            for x in reversed([int(v) for v in ids]):
                lru[x] = None
                lru.move_to_end(x)
            while len(lru) > cap_blocks:
                lru.popitem(last=False)
        cfg = {**BASE, "num_gpu_blocks": cap_blocks * U // 16, "max_model_len": 16001}
        _, res = run([cfg], tr)
        assert res.lane(0)["status"] == "ok"
        assert hit_tokens(res, 0).sum() == expect, cap_blocks
        assert expect > 0


@pytest.mark.slow  # long (29-30 s on 2 cores): runs in CI's slow step
def test_zero_capacity_tier_is_identical_to_no_tier(mooncake):
    tr = mooncake.head(120)
    base = {**BASE, "num_gpu_blocks": 3000, "max_num_seqs": 16}
    cfgs = [base, {**base, "tiers": "dram", "tier": {"dram": {"capacity_gb": 0}}},
            {**base, "tiers": "cxl,ssd",
             "tier": {"cxl": {"capacity_gb": 0}, "ssd": {"capacity_gb": 0}}}]
    _, res = run(cfgs, tr)
    for k, v in res.metrics.items():
        if k.startswith(("bytes_", "peak_blocks_tier1", "peak_blocks_tier2")):
            continue
        np.testing.assert_array_equal(v[1:], np.broadcast_to(v[0], v[1:].shape), err_msg=k)
    for name in ("ttft_s", "decode_s", "queue_s", "preemptions", "tokens_scheduled"):
        a = np.asarray(getattr(res.state, name))
        np.testing.assert_array_equal(a[1], a[0])
        np.testing.assert_array_equal(a[2], a[0])


@pytest.mark.slow
def test_lower_tier_hit_is_never_slower_than_a_miss():
    """Request A, then a filler that pushes A's blocks out of HBM into the tier, then B.
    B shares A's prompt (a lower-tier hit, or a recompute where the tier is not worth
    loading from) or has its own (a miss), on the same configuration: the hit's TTFT is
    never above the miss's. B arrives at an idle engine in both, so the queueing is the
    same (0). One batch: every (prompt, tier, bandwidth, hit/miss) is a lane."""
    cfgs, meta, trs = [], [], []
    for P in (1024, 12288):
        n = P // U
        a_ids = list(range(n))
        filler = list(range(1000, 1000 + (P + 2048) // U))
        for tier in ("dram", "cxl", "nvm", "ssd", "ssd_gen4", "remote", "grace"):
            for bw in (None, 0.05, 2.0):
                over = {} if bw is None else {"read_gbps": bw, "write_gbps": bw}
                cfg = {**BASE, "num_gpu_blocks": (P + 2048) // 16 + 8,
                       "max_model_len": P + 2048, "tiers": tier,
                       "tier": {tier: {"capacity_gb": 100, **over}}}
                for hit, b in ((True, a_ids), (False, list(range(5000, 5000 + n)))):
                    cfgs.append(cfg)
                    meta.append((P, tier, bw, hit))
                    trs.append(Trace([0.0, 100.0, 200.0], [P, P + 2048 - 8, P], [1, 4, 1],
                                     "ab", [a_ids, filler, b], U))
    _, res = run(cfgs, trs)
    assert (res.status == 0).all()
    ttft = np.asarray(res.state.ttft_s)[:, 2]
    results = {}
    for i, (P, tier, bw, hit) in enumerate(meta):
        if hit:
            results[(P, tier, bw)] = (float(ttft[i]), float(ttft[i + 1]),
                                      float(hit_tokens(res, i)[1:].sum()))
    for key, (hit, miss, _) in results.items():
        assert hit <= miss * (1 + 1e-6), (key, hit, miss)
    # not vacuous: fast tiers do serve the prefix and make B faster
    fast = [v for k, v in results.items() if k[1] in ("dram", "grace") and k[2] is None]
    assert all(lower > 0 and hit < 0.8 * miss for hit, miss, lower in fast), fast
    slow = [v for k, v in results.items() if k[2] == 0.05]
    assert all(lower == 0 for _, _, lower in slow)  # not worth loading: recomputed


@pytest.mark.slow
def test_one_compile_for_a_sweep_of_capacities_bandwidths_and_weights():
    """Two batches of different tier capacities, bandwidths, latencies, weights and
    overlaps share one compiled function (benchmarks/bench_tiers.py runs 1024)."""
    rng = np.random.default_rng(0)
    n = 24
    ids = [[g, 100 + i] for i, g in enumerate(rng.integers(0, 3, n))]
    tr = Trace(np.arange(n) * 0.05, np.full(n, 1100), np.full(n, 8), "shared", ids, U)

    def batch(n):
        out = []
        for _ in range(n):
            out.append({**BASE, "num_gpu_blocks": 300, "max_num_seqs": 8, "max_model_len": 2048,
                        "tiers": "dram,ssd",
                        "tier": {"dram": {"capacity_gb": float(rng.choice([0, 1, 4, 16])),
                                          "read_gbps": float(rng.uniform(5, 60))},
                                 "ssd": {"capacity_gb": float(rng.choice([0, 50, 500])),
                                         "read_gbps": float(rng.uniform(1, 14)),
                                         "latency_us": float(rng.uniform(10, 200))}},
                        "cache": {"recency_weight": float(rng.uniform(0, 2)),
                                  "frequency_weight": float(rng.uniform(0, 2)),
                                  "depth_weight": float(rng.uniform(0, 1)),
                                  "load_overlap": float(rng.uniform(0, 1))}})
        return out

    p1 = api.prepare(batch(64), tr, max_slots=8, cache_entries=256)
    simulate_batch(p1.shape, p1.params, p1.workload)
    before = sim_mod._run_chunk_batch._cache_size()
    p2 = api.prepare(batch(64), tr, max_slots=8, cache_entries=256)
    assert p2.shape == p1.shape
    r2 = simulate_batch(p2.shape, p2.params, p2.workload)
    assert sim_mod._run_chunk_batch._cache_size() == before
    assert (r2.status == 0).all()
