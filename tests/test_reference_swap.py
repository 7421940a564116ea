"""Hand-worked tests of §5.10 (swap preemption) and §5.11 (prefetch) in the oracle.

Every expected number is worked out by hand from docs/semantics.md in the comments.
Like tests/test_reference_prefix.py these tests never import jaxsim: they check the
oracle (tests/reference/event_sim.py) against the specification on its own.

The base config is the hand-checkable one of tests/test_reference_prefix.py (copied
here so that this file only depends on the oracle): one layer, h = 2, one head of
dimension 2, FFN 4, vocab 8, 1-byte weights and KV, peak = hbm = link = 1, all
efficiencies 0.5, F0 = B0 = 0, kernel overhead 1 s, cpu_iter 10 s, cpu_seq 100 s,
p = 1 (smax is a plain sum). For tp = 1, gemm(M, K, N, W) = 4MKN + 2W + 4MK + 4MN + 1
and mem(B) = 2B + 1, which gives for any batch (§3 features T, n, ns, Tp, Ap, Kp,
D, Kd):

    dtc = 480·T + 103 + 100·n + attnp + attnd + (168·ns + 34 if ns > 0 else 0),
    attnp = 16·Ap + 16·Tp + 8·Kp + 1   (if Tp > 0),
    attnd = 24·Kd + 16·D + 1           (if D > 0).

(Per layer qkv + o + up + down + elem = 448T + 91, embed + fnorm = 32T + 2, cpu_iter
10, lmhead + sample = 104ns + 33 + 64ns + 1.) Values used below:

    one prefill of x tokens with c = 0 that samples: C(x) + 202 = 8x² + 512x + 406:
        x = 8 -> 5014, x = 9 -> 5662, x = 12 -> 7702, x = 13 -> 8414;
    one decode (or a 1-token prefill) with c = 8, n_known = 9: 1118;
    one decode with c = 12 (Kd 13): 1214; with c = 13 (Kd 14): 1238;
    two prefills of 8 (c = 0) that both sample (T 16, Ap 72, Kp 16): 9890.

Cache blocks: U = 4 tokens, Bblk = U·2·L·nkv_g·hd·bw_kv = 4·2·1·1·2·1 = 16 bytes.
§5.10 with block_size = U = 4: nb(n) = ceil(n/4), sbytes(n) = 16·nb(n), sblk(n) = nb(n).

The lower tier (TIER1): read 0.5 B/s, write 0.25 B/s, latency 3 s, link 0.125 B/s, so
for R, W bytes in one iteration x = max(R/0.5 + W/0.25 + 3, max(R, W)/0.125): 16 bytes
read -> 128, 16 written -> 128, 32 read or written -> 256, R = 16 with W = 32 -> 256.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tests.reference.event_sim import (
    CONFIG_KEYS,
    OPTIONAL_CONFIG_KEYS,
    CostModel,
    PrefixCache,
    _Entry,
    iteration_time,
    simulate_reference,
    validate_config,
)
from tests.test_reference_prefix import TIER1, approx, make_config, make_workload, run

# Two lower tiers with the same parameters (both usable), on the same link.
TIER12: dict[str, Any] = {
    "tier_capacity_blocks": [8, 8],
    "tier_read_bw": [0.5, 0.5],
    "tier_write_bw": [0.25, 0.25],
    "tier_latency_s": [3.0, 3.0],
    "tier_link": [0, 0],
    "tier_link_bw": [0.125],
}


def _tier(cap: int, **changes: Any) -> dict[str, Any]:
    return dict(TIER1, tier_capacity_blocks=[cap], **changes)


# --------------------------------------------------------------------------------------
# Config keys
# --------------------------------------------------------------------------------------


def test_swap_and_prefetch_keys_defaults_and_normalisation() -> None:
    assert "swap" in OPTIONAL_CONFIG_KEYS and "prefetch" in OPTIONAL_CONFIG_KEYS
    assert not {"swap", "prefetch"} & set(CONFIG_KEYS)
    cfg = validate_config(make_config())
    assert cfg["swap"] is False and cfg["prefetch"] is False
    for value in (1, True, np.int64(1), 1.0, np.bool_(True)):
        cfg = validate_config(make_config(swap=value, prefetch=value))
        assert cfg["swap"] is True and cfg["prefetch"] is True
    cfg = validate_config(make_config(swap=0, prefetch=False))
    assert cfg["swap"] is False and cfg["prefetch"] is False


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"swap": 2}, "swap"),
        ({"swap": -1}, "swap"),
        ({"swap": 0.5}, "swap"),
        ({"swap": "yes"}, "swap"),
        ({"swap": None}, "swap"),
        ({"prefetch": 2}, "prefetch"),
        ({"prefetch": "1"}, "prefetch"),
        ({"prefetch": [1]}, "prefetch"),
    ],
)
def test_invalid_swap_prefetch_config_names_the_key(
    overrides: dict[str, Any], key: str
) -> None:
    with pytest.raises(ValueError, match=key):
        validate_config(make_config(**overrides))


# --------------------------------------------------------------------------------------
# §5.10 swap preemption
# --------------------------------------------------------------------------------------


def _two_decoders() -> dict[str, Any]:
    # r0, r1 (t 0): P 8, O 2, no block hashes (nothing is cached: only swap traffic).
    return make_workload([0.0, 0.0], [8, 8], [2, 2], [[], []])


# num_gpu_blocks = 4 (16 tokens), max_model_len = 12 (v0 needs a block to spare, §0),
# load_overlap f = 0.
# it 0 @0: both admitted (2 blocks each, free 0): two prefills of 8, dtc 9890; both
#     sample (g = 1, c = 8, n_known 9).
# it 1 @9890: r0 wants 1 token, need = ceil(9/4) - 2 = 1 > free 0: pop r1 (c 8).
#   swap: ts = 1 (cap 8 > 0); 0 + sblk(8) = 2 <= 8 -> swapped: sw = 8, c = 0,
#     swap_used = 2, W_1 = sbytes(8) = 32. free 2; r0 decodes (c 8 -> 9), finishes.
#     dtc 1118, x = 256 (32 written), exposed 256: dt 1374 -> 11264.
#   recompute: r1 c = 0. dt 1118 -> 11008.
# it 2: r1 alone.
#   swap: swap-in, h = sw = 8: want 9 - 8 = 1, need ceil(9/4) = 3; batch
#     (q 1, c 8, n_known 9, g 1) is a decode, dtc 1118; R_1 = 32, x = 256:
#     dt 1374 -> 12638. swap_used = 0.
#   recompute: prefill of n_known = 9 tokens (q 9, c 0, g 1): 5662 -> 16670.
def test_swap_out_and_swap_in_by_hand() -> None:
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 12}
    # v0 (§2.4) gives the same schedule: a prefill batch, a decode batch (whose
    # running phase swaps r1 out), then a "prefill" batch that swaps r1 in.
    for mode, kinds in (("v1", ["mixed"] * 3), ("v0", ["prefill", "decode", "prefill"])):
        res, trace = run(_two_decoders(), swap=1, mode=mode, **common, **TIER1)
        assert [it["kind"] for it in trace] == kinds
        assert [it["batch"] for it in trace] == [
            [(0, 8, 0, 8, 0), (1, 8, 0, 8, 0)], [(0, 1, 8, 9, 1)], [(1, 1, 8, 9, 1)],
        ]
        assert [it["dt"] for it in trace] == [approx(9890.0), approx(1374.0),
                                              approx(1374.0)]
        assert res["metrics"]["swaps"] == 1
    res, trace = run(_two_decoders(), swap=1, **common, **TIER1)
    assert [it["dt_compute"] for it in trace] == [approx(9890.0), approx(1118.0),
                                                  approx(1118.0)]
    assert [it["preempted"] for it in trace] == [[], [1], []]
    assert [it["swapped_out"] for it in trace] == [[], [1], []]
    assert [it["swapped_in"] for it in trace] == [[], [], [1]]
    assert [it["swap_used"] for it in trace] == [0, 2, 0]
    assert [it["bytes_written"] for it in trace] == [[0.0, 0.0], [0.0, 32.0], [0.0, 0.0]]
    assert [it["bytes_read"] for it in trace] == [[0.0, 0.0], [0.0, 0.0], [0.0, 32.0]]
    assert [it["xfer_s"] for it in trace] == [0.0, approx(256.0), approx(256.0)]
    assert [it["dt"] for it in trace] == [approx(9890.0), approx(1374.0), approx(1374.0)]
    assert list(res["finish_s"]) == [approx(11264.0), approx(12638.0)]
    assert list(res["first_token_s"]) == [approx(9890.0), approx(9890.0)]
    assert list(res["tokens_scheduled"]) == [9, 9]
    assert res["total_tokens"] == 18
    assert list(res["preemptions"]) == [0, 1]
    assert res["total_preemptions"] == 1
    assert res["metrics"]["swaps"] == 1
    assert res["metrics"]["prefetched_blocks"] == 0
    assert res["bytes_written_by_tier"] == [0.0, 32.0]
    assert res["bytes_read_by_tier"] == [0.0, 32.0]
    assert res["xfer_exposed_s"] == approx(512.0) and res["xfer_hidden_s"] == 0.0
    # Nothing is cached: swapped KV is not a cache entry.
    assert res["peak_entries_by_tier"] == [0, 0]
    # Used blocks (after scheduling): 4, 3 (r0's 3), 3 (r1's ceil(9/4)).
    assert res["kv_occupancy_peak"] == 1.0
    assert res["kv_occupancy_mean"] == approx(
        (4 * 9890.0 + 3 * 1374.0 + 3 * 1374.0) / (9890.0 + 2 * 1374.0) / 4
    )
    # §5.9: the swap bytes count in the energy: 64 bytes = 512 bits at 5 pJ/bit.
    e, _ = run(_two_decoders(), swap=1, tier_static_power_w=[0.0],
               tier_energy_pj_per_bit=[5.0], **common, **TIER1)
    assert e["metrics"]["energy_j_tier1"] == pytest.approx(5e-12 * 512, rel=1e-12)

    rec, rtrace = run(_two_decoders(), swap=0, **common, **TIER1)
    assert rtrace[2]["batch"] == [(1, 9, 0, 9, 1)]
    assert [it["dt"] for it in rtrace] == [approx(9890.0), approx(1118.0), approx(5662.0)]
    assert list(rec["finish_s"]) == [approx(11008.0), approx(16670.0)]
    assert list(rec["tokens_scheduled"]) == [9, 17]
    assert rec["total_preemptions"] == 1 and rec["metrics"]["swaps"] == 0
    assert rec["bytes_written_by_tier"] == [0.0, 0.0]
    # The hand numbers agree with the §3 cost model.
    cfg = make_config()
    assert iteration_time(cfg, [(8, 0, 8, 0), (8, 0, 8, 0)]) == approx(9890.0)
    assert iteration_time(cfg, [(1, 8, 9, 1)]) == approx(1118.0)
    assert iteration_time(cfg, [(9, 0, 9, 1)]) == approx(5662.0)


def test_swap_bytes_and_blocks_round_to_whole_kv_blocks() -> None:
    # block_size 3, U = 4, num_gpu_blocks 6, max_model_len 16 (ceil(16/3) = 6).
    # r0 (t 0): P 9 O 2; r1 (t 0): P 7 O 2. it 0: r0 needs 3 blocks, r1 ceil(7/3) = 3
    # -> free 0. it 1: r0 decode c 9 -> 10 needs ceil(10/3) - 3 = 1: pop r1 (c 7).
    # nb(7) = 3, sbytes(7) = 3·3·16/4 = 36 bytes (not 7·16/4 = 28), sblk(7) =
    # ceil(9/4) = 3 swap-tier blocks. Tier cap 3: swapped; cap 2: recomputed although
    # 7 tokens fit in 2 cache blocks of 4.
    wl = make_workload([0.0, 0.0], [9, 7], [2, 2], [[], []])
    common = {
        "enable_prefix_caching": True, "block_size": 3, "num_gpu_blocks": 6,
        "max_model_len": 16, "swap": True,
    }
    res, trace = run(wl, **common, **_tier(3))
    assert trace[1]["swapped_out"] == [1] and trace[1]["swap_used"] == 3
    assert trace[1]["bytes_written"] == [0.0, 36.0]
    # it 2: swap-in with h = 7: q = 8 - 7 = 1, need ceil(8/3) = 3; 36 bytes read.
    assert trace[2]["batch"] == [(1, 1, 7, 8, 1)]
    assert trace[2]["bytes_read"] == [0.0, 36.0] and trace[2]["swap_used"] == 0
    assert res["metrics"]["swaps"] == 1
    res2, trace2 = run(wl, **common, **_tier(2))
    assert trace2[1]["preempted"] == [1] and trace2[1]["swapped_out"] == []
    assert trace2[2]["batch"] == [(1, 8, 0, 8, 1)]
    assert res2["metrics"]["swaps"] == 0 and res2["bytes_written_by_tier"] == [0.0, 0.0]


def _two_victims(p2: int) -> dict[str, Any]:
    # r0 (t 0): P 23 O 1; r1 (t 0): P 4 O 3; r2 (t 0): P p2 O 3. No hashes.
    return make_workload([0.0, 0.0, 0.0], [23, 4, p2], [1, 3, 3], [[], [], []])


# num_gpu_blocks 6, max_model_len 24 (6 blocks), long_prefill_token_threshold 12.
# it 0: r0 chunk of 12 (3 blocks), r1 prefill 4 (1 block), r2 prefill p2; r1 and r2
#     sample (g = 1).
# it 1: r0 wants 11 more (c 12 -> 23): need 6 - 3 = 3.
def test_swap_prefix_rule_second_victim_does_not_fit() -> None:
    # p2 = 4: free after it 0 = 6 - 3 - 1 - 1 = 1 < 3: pop v1 = r2 (c 4, frees 1 ->
    # free 2): 0 + sblk(4) = 1 <= cap 1 -> swapped (W_1 = 16). Still 3 > 2: pop v2 =
    # r1 (c 4, free 3): 1 + 1 = 2 > 1 -> recomputed. r0 gets its 11 tokens, finishes.
    # it 2: waiting [r1, r2] (r1, preempted later, in front). r1 recomputes n_known =
    # 5 (q 5, c 0, g 1, need 2); r2 swaps in: h = 4, q 1, need ceil(5/4) = 2 (R_1 = 16).
    # it 3: both decode (c 5 -> 6) and finish.
    common = {
        "enable_prefix_caching": True, "num_gpu_blocks": 6, "max_model_len": 24,
        "long_prefill_token_threshold": 12, "swap": 1,
    }
    res, trace = run(_two_victims(4), **common, **_tier(1))
    assert [it["batch"] for it in trace] == [
        [(0, 12, 0, 23, 0), (1, 4, 0, 4, 0), (2, 4, 0, 4, 0)],
        [(0, 11, 12, 23, 0)],
        [(1, 5, 0, 5, 1), (2, 1, 4, 5, 1)],
        [(1, 1, 5, 6, 2), (2, 1, 5, 6, 2)],
    ]
    assert trace[1]["preempted"] == [2, 1]
    assert trace[1]["swapped_out"] == [2]
    assert [it["swap_used"] for it in trace] == [0, 1, 0, 0]
    assert trace[1]["bytes_written"] == [0.0, 16.0]
    assert trace[2]["swapped_in"] == [2] and trace[2]["bytes_read"] == [0.0, 16.0]
    assert list(res["tokens_scheduled"]) == [23, 10, 6]
    assert list(res["preemptions"]) == [0, 1, 1]
    assert res["total_preemptions"] == 2 and res["metrics"]["swaps"] == 1
    # it 1's x: 16 bytes written -> 128 = its exposed time (f = 0).
    assert trace[1]["exposed_s"] == approx(128.0)
    assert trace[1]["dt"] == approx(iteration_time(make_config(), [(11, 12, 23, 0)]) + 128.0)

    # cap 2: both fit (1 + 1 <= 2): two swaps, 32 bytes written, both swap in at it 2
    # as decodes of one token.
    res2, trace2 = run(_two_victims(4), **common, **_tier(2))
    assert trace2[1]["swapped_out"] == [2, 1] and trace2[1]["swap_used"] == 2
    assert trace2[2]["batch"] == [(1, 1, 4, 5, 1), (2, 1, 4, 5, 1)]
    assert res2["metrics"]["swaps"] == 2
    assert res2["bytes_written_by_tier"] == [0.0, 32.0]
    assert res2["bytes_read_by_tier"] == [0.0, 32.0]


def test_swap_prefix_rule_first_victim_too_big_blocks_the_second() -> None:
    # p2 = 8: free after it 0 = 6 - 3 - 1 - 2 = 0. it 1: pop v1 = r2 (c 8, free 2):
    # sblk(8) = 2 > cap 1 -> recomputed; v2 = r1 (c 4, free 3) would fit alone
    # (sblk 1 <= 1) but an earlier victim was not swapped: recomputed too.
    common = {
        "enable_prefix_caching": True, "num_gpu_blocks": 6, "max_model_len": 24,
        "long_prefill_token_threshold": 12, "swap": 1,
    }
    res, trace = run(_two_victims(8), **common, **_tier(1))
    assert trace[1]["preempted"] == [2, 1] and trace[1]["swapped_out"] == []
    assert res["metrics"]["swaps"] == 0
    assert res["bytes_written_by_tier"] == [0.0, 0.0]
    assert trace[2]["batch"] == [(1, 5, 0, 5, 1), (2, 9, 0, 9, 1)]


def test_swap_without_a_lower_tier_is_recompute() -> None:
    # §5.10: no t >= 1 with cap_t > 0 -> swap behaves as recompute in every iteration:
    # bit-identical results (no tier, or one of capacity 0), swaps = 0.
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16}
    for tiers in ({}, _tier(0), dict(TIER12, tier_capacity_blocks=[0, 0])):
        t_rec: list[dict[str, Any]] = []
        t_swap: list[dict[str, Any]] = []
        rec = simulate_reference(
            _two_decoders(), make_config(swap=0, **common, **tiers), trace=t_rec
        )
        sw = simulate_reference(
            _two_decoders(), make_config(swap=1, **common, **tiers), trace=t_swap
        )
        _assert_same_results(rec, sw)
        assert t_rec == t_swap
        assert sw["total_preemptions"] == 1 and sw["metrics"]["swaps"] == 0
        assert list(sw["tokens_scheduled"]) == [9, 17]
    # And on random lanes whose lower tiers all have capacity 0.
    rng = np.random.default_rng(21)
    for _ in range(60):
        wl, cfg = _random_lane(rng)
        n = len(cfg["tier_capacity_blocks"])
        cfg = dict(cfg, tier_capacity_blocks=[0] * n)
        t0: list[dict[str, Any]] = []
        t1: list[dict[str, Any]] = []
        a = simulate_reference(wl, dict(cfg, swap=0), trace=t0)
        b = simulate_reference(wl, dict(cfg, swap=1), trace=t1)
        _assert_same_results(a, b)
        assert t0 == t1


def _tier_space_workload() -> dict[str, Any]:
    # ra (t 0): P 8 O 1 [10, 11]; r0, r1 (t 1e5): P 8 O 2, no hashes;
    # rc (t 2e5): P 9 O 1 [10, 11].
    return make_workload(
        [0.0, 1e5, 1e5, 2e5], [8, 8, 8, 9], [1, 2, 2, 1], [[10, 11], [], [], [10, 11]]
    )


# num_gpu_blocks 4, max_model_len 16, tier 1 of capacity 3 (and a tier 2 of 8).
# it 0: ra prefill, entries 10 (depth 0), 11 (depth 1), last 0, in HBM.
# it 1 @1e5: r0 and r1 prefill 8 and keep running with 2 blocks each: cap_0 = 0 ->
#     evict 11 then 10 (same last, deeper first) to tier 1 (W_1 = 32). Tier 1: 2 <= 3.
# it 2: r0's decode needs a block: r1 (c 8) is swapped, sblk(8) = 2 <= 3:
#     swap_used = 2 (W_1 += 32). Step 5: tier 1 may hold 3 - 2 = 1 entry and holds
#     2: evict 1 in eviction order (11: last 0, depth 1) -> tier 2 (W_2 = 16) or,
#     without tier 2, dropped.
# it 3: r1 swaps in (R_1 = 32), finishes; swap_used 0, tier 1 may hold 3 again.
# it 4 @2e5: rc looks up [10, 11] (kmax = min(2, floor(8/4)) = 2):
#     tier 2 present: 10 in tier 1, 11 in tier 2 -> 2 hits (tiers [1, 2]), q 1;
#     tier 1 only: 10 in tier 1, 11 gone -> 1 hit (tier [1]), q 5.
#     Without swap (recompute), nothing leaves tier 1: 2 hits, both in tier 1.
def test_swap_used_shrinks_the_swap_tier_cache() -> None:
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16}
    two = dict(TIER12, tier_capacity_blocks=[3, 8])
    res, trace = run(_tier_space_workload(), swap=1, **common, **two)
    assert [it["evicted"] for it in trace] == [
        [], [(11, 0, 1), (10, 0, 1)], [(11, 1, 2)], [], [],
    ]
    assert [it["swap_used"] for it in trace] == [0, 0, 2, 0, 0]
    assert [it["entries"] for it in trace] == [
        [2, 0, 0], [0, 2, 0], [0, 1, 1], [0, 1, 1], [2, 0, 0],
    ]
    assert trace[2]["bytes_written"] == [0.0, 32.0, 16.0]
    assert trace[4]["hit_blocks"] == [(3, 2, [1, 2])]
    assert trace[4]["batch"] == [(3, 1, 8, 9, 0)]
    assert res["hit_tokens_by_tier"] == [0, 4, 4]
    assert res["bytes_written_by_tier"] == [0.0, 64.0, 16.0]
    # R_1: swap-in 32 at it 3, load of 10 at it 4; R_2: load of 11 at it 4.
    assert res["bytes_read_by_tier"] == [0.0, 48.0, 16.0]
    assert res["metrics"]["swaps"] == 1

    one, otrace = run(_tier_space_workload(), swap=1, **common, **_tier(3))
    assert [it["evicted"] for it in otrace] == [
        [], [(11, 0, 1), (10, 0, 1)], [(11, 1, None)], [], [],
    ]
    assert [it["entries"] for it in otrace] == [[2, 0], [0, 2], [0, 1], [0, 1], [2, 0]]
    assert otrace[4]["hit_blocks"] == [(3, 1, [1])]
    assert otrace[4]["batch"] == [(3, 5, 4, 9, 0)]
    assert one["hit_tokens_by_tier"] == [0, 4]
    assert one["bytes_written_by_tier"] == [0.0, 64.0]
    assert one["bytes_read_by_tier"] == [0.0, 48.0]

    rec, rtrace = run(_tier_space_workload(), swap=0, **common, **_tier(3))
    assert [it["evicted"] for it in rtrace] == [[], [(11, 0, 1), (10, 0, 1)], [], [], []]
    assert rtrace[4]["hit_blocks"] == [(3, 2, [1, 1])]
    assert rec["hit_tokens_by_tier"] == [0, 8]
    assert rec["bytes_written_by_tier"] == [0.0, 32.0]
    assert rec["bytes_read_by_tier"] == [0.0, 32.0]


def test_swap_tier_full_of_swapped_kv_still_receives_demotions() -> None:
    # AMBIGUITY pinned down (oracle): the demotion target is still the next tier with
    # cap > 0, so with cap_ts - swap_used = 0 an HBM eviction is written to ts and
    # then evicted from it as excess. Lane of the test above with tier 1 of capacity
    # 2 (r1's swap fills it) and no tier 2. it 2: 0 + 2 <= 2 swapped; step 5 tier 1
    # may hold 0: both 11 and 10 are dropped (11 first).
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16}
    res, trace = run(_tier_space_workload(), swap=1, **common, **_tier(2))
    assert trace[2]["evicted"] == [(11, 1, None), (10, 1, None)]
    assert trace[2]["entries"] == [0, 0]
    assert trace[4]["hit_blocks"] == [(3, 0, [])]
    assert res["hit_tokens_by_tier"] == [0, 0]


# --------------------------------------------------------------------------------------
# §5.11 prefetch
# --------------------------------------------------------------------------------------


def _prefetch_workload(rb_hashes: list[int]) -> dict[str, Any]:
    # ra (t 0): P 8 O 1 [10, 11]; rb (t 1e5): P 12 O 3 rb_hashes;
    # rc (t 101000, during rb's prefill): P 9 O 1 [10, 11].
    return make_workload(
        [0.0, 1e5, 101000.0], [8, 12, 9], [1, 3, 1], [[10, 11], rb_hashes, [10, 11]]
    )


# num_gpu_blocks 4, max_model_len 16, TIER1 (cap 8), window W = 1, prefetch on.
# it 0 @0: ra prefill, dt 5014: entries 10 (depth 0), 11 (depth 1) in HBM, last 0.
# it 1 @1e5: rb prefill 12 (dtc 7702), keeps 3 blocks: cap_0 = 1 -> 11 demoted to
#     tier 1 (W_1 = 16, x = 128, hidden). End 107702. Prefetch: waiting [rc] (arrived
#     101000 <= 107702); room = cap_0 - unpinned tier-0 = 1 - 1 = 0: nothing.
# it 2 @107702: rb decode c 12 -> 13 (dtc 1214) takes the last free block; rc (h 8,
#     need 3) does not fit. cap_0 = 0 -> 10 demoted (W_1 = 16, x 128). Room 0.
# it 3 @108916: rb decode c 13 -> 14 (dtc 1238), rc still does not fit. rb finishes:
#     cap_0 = 4. Prefetch for rc: kmax 2, both blocks have an entry (tier 1): pk = 2,
#     candidates [10, 11]. x(0) = 0, x(1) = 128, x(2) = 256; bound max(0, f·1238);
#     room = 4 - (rb's unpinned tier-0 entries: 0, or 3 with hashes [20, 21, 22]).
# it 4 @108916 + 1238 = 110154: rc admitted (q 1, c 8, dtc 1118) with the hits that
#     the prefetch left.
def test_prefetch_turns_lower_tier_hits_into_hbm_hits() -> None:
    # f = 0.21: it 1, 2 hide their 128 (0.21·1214 = 254.94); at it 3 the bound is
    # 0.21·1238 = 259.98 >= x(2) = 256 and room = 4: n* = 2, both blocks move to HBM
    # (last = 3), R_1 = 32, hidden 256, exposed 0, dt = dtc = 1238.
    # it 4: rc hits 10, 11 in tier 0: no load, exposed 0, load_s = 0;
    # ttft = 110154 + 1118 - 101000 = 10272, queue = 9154.
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16,
              "load_overlap": 0.21}
    res, trace = run(_prefetch_workload([]), prefetch=1, **common, **TIER1)
    assert [it["prefetched"] for it in trace] == [[], [], [], [(10, 1), (11, 1)], []]
    assert [it["entries"] for it in trace] == [[2, 0], [1, 1], [0, 2], [0, 2], [2, 0]]
    assert trace[3]["bytes_read"] == [0.0, 32.0]
    assert trace[3]["xfer_s"] == approx(256.0)
    assert trace[3]["hidden_s"] == approx(256.0) and trace[3]["exposed_s"] == 0.0
    assert trace[3]["dt"] == approx(1238.0)
    assert trace[4]["hit_blocks"] == [(2, 2, [0, 0])]
    assert trace[4]["bytes_read"] == [0.0, 0.0] and trace[4]["exposed_s"] == 0.0
    assert [it["dt"] for it in trace] == [
        approx(5014.0), approx(7702.0), approx(1214.0), approx(1238.0), approx(1118.0),
    ]
    assert res["hit_tokens_by_tier"] == [8, 0]
    assert res["metrics"]["prefetched_blocks"] == 2
    assert res["metrics"]["swaps"] == 0
    assert res["load_s"][2] == 0.0
    assert res["ttft_s"][2] == approx(10272.0)
    assert res["queue_s"][2] == approx(9154.0)
    assert res["bytes_read_by_tier"] == [0.0, 32.0]
    assert res["bytes_written_by_tier"] == [0.0, 32.0]
    assert res["xfer_hidden_s"] == approx(128.0 + 128.0 + 256.0)
    assert res["xfer_exposed_s"] == 0.0
    # Peak entries are taken after §5.5 step 5 (before the prefetch moves).
    assert res["peak_entries_by_tier"] == [2, 2]
    # The cost numbers used above.
    cfg = make_config()
    assert iteration_time(cfg, [(1, 12, 13, 1)]) == approx(1214.0)
    assert iteration_time(cfg, [(1, 13, 14, 2)]) == approx(1238.0)

    # Without prefetch rc loads both blocks at it 4: R_1 = 32, x = 256, exposed =
    # 256 - 0.21·1118 = 21.22 = its load_s; hits in tier 1.
    off, otrace = run(_prefetch_workload([]), prefetch=0, **common, **TIER1)
    assert otrace[4]["hit_blocks"] == [(2, 2, [1, 1])]
    assert off["hit_tokens_by_tier"] == [0, 8]
    assert off["load_s"][2] == approx(256.0 - 0.21 * 1118.0)
    assert off["ttft_s"][2] == approx(10272.0 + 256.0 - 0.21 * 1118.0)
    assert off["metrics"]["prefetched_blocks"] == 0
    assert off["bytes_read_by_tier"] == [0.0, 32.0]


@pytest.mark.parametrize(
    ("rb_hashes", "f", "n_star", "rc_tiers"),
    [
        # transfer bound: f = 0 and x(0) = 0 -> nothing (x(1) = 128 > 0).
        ([], 0.0, 0, [1, 1]),
        # transfer bound: 0.15·1238 = 185.7 >= x(1) = 128 but < x(2) = 256 -> 1.
        ([], 0.15, 1, [0, 1]),
        # room: rb's blocks 20, 21, 22 stay unpinned in HBM: room = 4 - 3 = 1,
        # although the bound (259.98 >= 256) would allow 2.
        ([20, 21, 22], 0.21, 1, [0, 1]),
        ([], 0.21, 2, [0, 0]),
    ],
)
def test_prefetch_limited_by_room_and_transfer_bound(
    rb_hashes: list[int], f: float, n_star: int, rc_tiers: list[int]
) -> None:
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16,
              "load_overlap": f}
    res, trace = run(_prefetch_workload(rb_hashes), prefetch=1, **common, **TIER1)
    assert [len(it["prefetched"]) for it in trace] == [0, 0, 0, n_star, 0]
    assert trace[3]["prefetched"] == [(10, 1), (11, 1)][:n_star]
    assert trace[3]["bytes_read"] == [0.0, 16.0 * n_star]
    assert trace[3]["xfer_s"] == approx([0.0, 128.0, 256.0][n_star])
    assert trace[3]["exposed_s"] == 0.0  # the prefetch never exposes anything
    assert trace[3]["dt"] == approx(1238.0)
    assert trace[4]["hit_blocks"] == [(2, 2, rc_tiers)]
    assert res["metrics"]["prefetched_blocks"] == n_star
    # Room of it 3 as the oracle computed it (cap_0 4 minus unpinned tier-0 entries).
    assert res["hit_tokens_by_tier"] == [4 * rc_tiers.count(0), 4 * rc_tiers.count(1)]


# Swap + prefetch (§5.11 bound with x(0) > 0; positions of swapped requests).
# num_gpu_blocks 4, max_model_len 16, tier 1 of capacity 4, f = 0, swap and prefetch on.
# ra (t 0): P 8 O 1 [10, 11]; r0, r1 (t 1e5): P 8 O 2; rc (t 105000): P 9 O 1 [10, 11].
# it 0: ra, 5014. it 1 @1e5: r0, r1 prefill (dtc 9890); cap_0 = 0 -> 11, 10 demoted
#     (W_1 = 32, x = 256, exposed 256): end 110146. rc arrived (105000): prefetch
#     room = 0 - 0 = 0.
# it 2 @110146: r1 swapped out (swap_used 2, W_1 = 32; tier 1 may hold 4 - 2 = 2:
#     no eviction); r0 decodes and finishes (dtc 1118, x(0) = 256, exposed 256): end
#     111520. waiting after: [r1 (p 0, sw 8: not a prefetch request), rc (p 1)].
#   W = 2: rc's candidates [10, 11], room = 4. Bound max(x(0) = 256, 0) = 256:
#     x(1): R 16, W 32 -> dev 32 + 128 + 3 = 163, link max(16, 32)/0.125 = 256;
#     x(2): R 32 -> dev 195, link 256. Full duplex: n* = 2 with f = 0; hidden 0.
#   W = 1: rc is at p = 1: nothing.
# it 3 @111520: r1 swaps in (h 8, q 1, need 3, R_1 = 32, x 256, exposed 256); rc
#     needs 3 > 1 free: waits. End 112894. (W = 1: prefetch for rc now: x(0) = 256
#     from the swap-in read, x(1) = max(48, 0)/0.125 = 384 > 256: nothing.)
# it 4 @112894: rc admitted (q 1, c 8, dtc 1118).
#   W = 2: tier-0 hits, no transfer: load_s 0, ttft = 114012 - 105000 = 9012.
#   W = 1: tier-1 hits, R_1 = 32, x = exposed = 256: load_s 256, ttft 9268.
def test_prefetch_rides_on_a_swap_write_and_skips_swapped_requests() -> None:
    wl = make_workload(
        [0.0, 1e5, 1e5, 105000.0], [8, 8, 8, 9], [1, 2, 2, 1], [[10, 11], [], [], [10, 11]]
    )
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16,
              "swap": 1, "prefetch": 1}
    res, trace = run(wl, adm_window=2, **common, **_tier(4))
    assert [it["swapped_out"] for it in trace] == [[], [], [2], [], []]
    assert [it["swapped_in"] for it in trace] == [[], [], [], [2], []]
    assert [it["prefetched"] for it in trace] == [[], [], [(10, 1), (11, 1)], [], []]
    assert trace[2]["bytes_read"] == [0.0, 32.0]
    assert trace[2]["bytes_written"] == [0.0, 32.0]
    assert trace[2]["xfer_s"] == approx(256.0)
    assert trace[2]["exposed_s"] == approx(256.0) and trace[2]["hidden_s"] == 0.0
    assert [it["dt"] for it in trace] == [
        approx(5014.0), approx(10146.0), approx(1374.0), approx(1374.0), approx(1118.0),
    ]
    assert trace[4]["hit_blocks"] == [(3, 2, [0, 0])]
    assert res["hit_tokens_by_tier"] == [8, 0]
    assert res["load_s"][3] == 0.0
    assert res["ttft_s"][3] == approx(9012.0)
    assert res["queue_s"][3] == approx(7894.0)
    assert res["metrics"]["swaps"] == 1 and res["metrics"]["prefetched_blocks"] == 2
    assert res["bytes_read_by_tier"] == [0.0, 64.0]
    assert res["bytes_written_by_tier"] == [0.0, 64.0]

    res1, trace1 = run(wl, adm_window=1, **common, **_tier(4))
    assert all(it["prefetched"] == [] for it in trace1)
    assert trace1[4]["hit_blocks"] == [(3, 2, [1, 1])]
    assert res1["hit_tokens_by_tier"] == [0, 8]
    assert res1["load_s"][3] == approx(256.0)
    assert res1["ttft_s"][3] == approx(9268.0)
    assert res1["metrics"]["prefetched_blocks"] == 0
    assert res1["bytes_read_by_tier"] == [0.0, 64.0]


# A tier unusable for hits (latency 2000: a load takes max(2000 + 32, 128) = 2032 >
# C(4) - C(1) = 1656). num_gpu_blocks 5, max_model_len 20, f = 0.6, W = 1.
# ra (t 0): P 8 O 1 [10, 11]; rb (t 1e5): P 13 O 2; rd (t 100500): P 4 O 1;
# rc (t 101000): P 9 O 1 [10, 11].
# it 0: ra, 5014. it 1 @1e5: rb prefill 13 (dtc 8414), keeps 4 blocks: cap_0 = 1 ->
#     11 demoted to tier 1 (W_1 = 16, x = 64 + 2000 = 2064 <= 0.6·8414: hidden).
#     End 108414. Prefetch: waiting [rd, rc], W = 1: only rd (no hashes).
# it 2 @108414: rb decodes (c 13 -> 14, no new block), rd is admitted (need 1, free
#     0 after), rc (10 in HBM is a hit, 11 in the unusable tier a miss: h 4, need 3)
#     does not fit. Batch rb (1, 13, 14, 1) + rd (4, 0, 4, 0): T 5, n 2, ns 2,
#     Tp 4, Ap 10, Kp 4, D 1, Kd 14: dtc = 2400 + 103 + 200 + 257 + 353 + 370 =
#     3683. Both finish: cap_0 = 5, room = 5 - 1 = 4. Prefetch for rc: pk = 2 (11 has
#     an entry, usable or not), candidates [11]; x(1) = 2032 <= 0.6·3683 = 2209.8:
#     11 moves to HBM (R_1 = 16, hidden 2032). End 112097.
# it 3: rc hits 10 and 11 in tier 0: h 8, q 1 (dtc 1118).
#     Without prefetch: h 4 (tier 0), q 5, c 4: Ap = 5·(4 + 3) = 35, Kp 9,
#     attnp 713, dtc = 2400 + 103 + 100 + 713 + 202 = 3518; 11 is recomputed.
def test_prefetch_from_an_unusable_tier_makes_a_hit() -> None:
    wl = make_workload(
        [0.0, 1e5, 100500.0, 101000.0], [8, 13, 4, 9], [1, 2, 1, 1],
        [[10, 11], [], [], [10, 11]],
    )
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 5, "max_model_len": 20,
              "load_overlap": 0.6, **_tier(8, tier_latency_s=[2000.0])}
    cfg = validate_config(make_config(**common))
    assert PrefixCache(cfg, CostModel(cfg), 4).usable == [True, False]
    res, trace = run(wl, prefetch=1, **common)
    assert trace[2]["batch"] == [(1, 1, 13, 14, 1), (2, 4, 0, 4, 0)]
    assert trace[2]["dt_compute"] == approx(3683.0)
    assert trace[2]["prefetched"] == [(11, 1)]
    assert trace[2]["xfer_s"] == approx(2032.0) and trace[2]["hidden_s"] == approx(2032.0)
    assert trace[2]["dt"] == approx(3683.0)
    assert trace[3]["hit_blocks"] == [(3, 2, [0, 0])]
    assert trace[3]["batch"] == [(3, 1, 8, 9, 0)]
    assert res["hit_tokens_by_tier"] == [8, 0]
    assert res["bytes_read_by_tier"] == [0.0, 16.0]
    assert res["first_token_s"][3] == approx(112097.0 + 1118.0)
    assert res["metrics"]["prefetched_blocks"] == 1
    assert iteration_time(make_config(), [(1, 13, 14, 1), (4, 0, 4, 0)]) == approx(3683.0)

    off, otrace = run(wl, prefetch=0, **common)
    assert otrace[3]["hit_blocks"] == [(3, 1, [0])]
    assert otrace[3]["batch"] == [(3, 5, 4, 9, 0)]
    assert otrace[3]["dt"] == approx(3518.0)
    assert off["hit_tokens_by_tier"] == [4, 0]
    assert off["bytes_read_by_tier"] == [0.0, 0.0]
    # f = 0.5: 0.5·3683 = 1841.5 < 2032: nothing is prefetched.
    half, htrace = run(wl, prefetch=1, **dict(common, load_overlap=0.5))
    assert half["metrics"]["prefetched_blocks"] == 0
    assert htrace[3]["hit_blocks"] == [(3, 1, [0])]


def test_prefetch_candidates_order_dedup_and_any_tier_prefix() -> None:
    # PrefixCache.prefetch on its own, with hand-placed entries (TIER12, both tiers
    # cap 8). Requests in p order: A = [1, 2, 3, 4] (n_known 17: kmax 4),
    # B = [2, 5, 9, 6] (n_known 17), C = [7] (n_known 4: kmax = floor(3/4) = 0).
    # Entries: 1 tier 0, 2 tier 2, 3 tier 1, 4 none, 5 tier 1, 6 tier 1, 7 tier 1.
    # A: pk = 3 (block 4 has no entry) -> candidates 2 (tier 2), 3 (tier 1).
    # B: 2 already a candidate; 5 (tier 1); 9 has no entry -> pk = 2: 6 is not one.
    # C: kmax 0. Candidates: [2 (t2), 3 (t1), 5 (t1)].
    cfg = validate_config(make_config(**TIER12))
    cache = PrefixCache(cfg, CostModel(cfg), 4)
    for block, tier in {1: 0, 2: 2, 3: 1, 5: 1, 6: 1, 7: 1}.items():
        cache.entries[block] = _Entry(tier=tier, last=0, hits=3, depth=0)
        cache.count[tier] += 1
    requests = [([1, 2, 3, 4], 17), ([2, 5, 9, 6], 17), ([7], 4)]
    # Room 3, unbounded window: all three (block 2 once: a duplicate would have
    # displaced block 5).
    cache.room = 3
    read = [0.0, 0.0, 0.0]
    moved = cache.prefetch(7, requests, read, [0.0, 0.0, 0.0], 1e9)
    assert moved == [(2, 2), (3, 1), (5, 1)]
    assert read == [0.0, 32.0, 16.0]
    assert cache.entries[2].tier == 0 and cache.entries[2].last == 7
    assert cache.entries[2].hits == 3  # unchanged
    assert cache.entries[5].tier == 0 and cache.entries[5].last == 7
    # 6 lies beyond B's pk, 7 beyond C's kmax: they stay.
    assert cache.entries[6].tier == 1 and cache.entries[7].tier == 1
    assert cache.count == [4, 2, 0]
    # Room 2: the first two candidates only.
    cache3 = PrefixCache(cfg, CostModel(cfg), 4)
    for block, tier in {1: 0, 2: 2, 3: 1, 5: 1}.items():
        cache3.entries[block] = _Entry(tier=tier, last=0, hits=1, depth=0)
        cache3.count[tier] += 1
    cache3.room = 2
    assert cache3.prefetch(1, requests, [0.0] * 3, [0.0] * 3, 1e9) == [(2, 2), (3, 1)]
    # Tiers 1 and 2 share link 0: reading one block from each costs link 32/0.125 =
    # 256 (device 35 each). Window 200: only x(1) = 128 fits; window 0 with x(0) =
    # 0: nothing.
    cache2 = PrefixCache(cfg, CostModel(cfg), 4)
    for block, tier in {1: 0, 2: 2, 3: 1, 5: 1}.items():
        cache2.entries[block] = _Entry(tier=tier, last=0, hits=1, depth=0)
        cache2.count[tier] += 1
    cache2.room = 5
    assert cache2.prefetch(1, requests, [0.0] * 3, [0.0] * 3, 0.0) == []
    read2 = [0.0] * 3
    assert cache2.prefetch(1, requests, read2, [0.0] * 3, 200.0) == [(2, 2)]
    assert read2 == [0.0, 0.0, 16.0]


# --------------------------------------------------------------------------------------
# Off means off
# --------------------------------------------------------------------------------------


def _assert_same_results(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert set(a) == set(b)
    for key, va in a.items():
        vb = b[key]
        if key == "metrics":
            assert set(va) == set(vb)
            for mk in va:
                assert va[mk] == vb[mk] or (math.isnan(va[mk]) and math.isnan(vb[mk])), mk
        elif isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and np.array_equal(va, vb, equal_nan=True), key
        elif isinstance(va, float) and math.isnan(va):
            assert math.isnan(vb), key
        else:
            assert va == vb, key


def _random_lane(
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, Any]]:
    # A random small lane with prefix caching on, shared prefixes and tight HBM (the
    # generator of tests/test_reference_prefix.py, with a random window).
    R = int(rng.integers(1, 12))
    mml = int(rng.integers(8, 40))
    P = rng.integers(1, mml // 2 + 1, R)
    O = rng.integers(1, mml // 2 + 1, R)
    arrival = np.round(rng.exponential(800.0, R).cumsum() * rng.integers(0, 2))
    rng.shuffle(arrival)
    U = int(rng.integers(2, 5))
    hashes = []
    for i in range(R):
        n = int(rng.integers(0, (P[i] + O[i]) // U + 2))
        root = int(rng.integers(0, 3))
        hashes.append([root * 100 + j if rng.random() < 0.8 else 1000 + 10 * i + j
                       for j in range(n)])
    wl = {"arrival_s": arrival, "prompt_tokens": P, "output_tokens": O,
          "hash_ids": hashes, "hash_block_tokens": U}
    num_lower = int(rng.choice([0, 1, 1, 2, 2]))
    block_size = int(rng.integers(1, 6))
    watermark = int(rng.integers(0, 3))
    min_blocks = -(-mml // block_size) + watermark
    cfg = make_config(
        mode=str(rng.choice(["v1", "v0"])),
        enable_chunked_prefill=bool(rng.integers(0, 2)),
        max_num_seqs=int(rng.integers(1, 5)),
        max_num_batched_tokens=int(rng.integers(4, 50)),
        long_prefill_token_threshold=int(rng.choice([0, 0, 3, 7])),
        block_size=block_size,
        num_gpu_blocks=int(min_blocks + rng.integers(-1, 6)),
        watermark_blocks=watermark,
        max_model_len=mml,
        enable_prefix_caching=True,
        tier_capacity_blocks=[int(v) for v in rng.integers(0, 8, num_lower)],
        tier_read_bw=[float(v) for v in rng.uniform(0.1, 1.0, num_lower)],
        tier_write_bw=[float(v) for v in rng.uniform(0.1, 1.0, num_lower)],
        tier_latency_s=[float(v) for v in rng.uniform(0.0, 20.0, num_lower)],
        tier_link=[int(v) for v in rng.integers(0, 2, num_lower)],
        tier_link_bw=[0.5, 0.1],
        w_rec=float(rng.choice([1.0, 0.5])),
        w_freq=float(rng.choice([0.0, 1.0])),
        w_depth=float(rng.choice([0.0, 0.25])),
        load_overlap=float(rng.uniform(0.0, 1.0)),
        w_adm=float(rng.choice([0.0, 2.0])),
        adm_window=int(rng.integers(1, 4)),
    )
    return wl, cfg


def test_swap_and_prefetch_zero_are_identical_to_omitting_the_keys() -> None:
    # §5.10 / §5.11: "With swap = 0 (prefetch = 0) this section changes nothing", bit
    # for bit, traces included; and with prefix caching off (§5 off) swap = prefetch
    # = 1 change nothing either.
    rng = np.random.default_rng(13)
    for i in range(80):
        wl, cfg = _random_lane(rng)
        if i % 3 == 0:
            cfg = dict(cfg, enable_prefix_caching=False)
        t0: list[dict[str, Any]] = []
        t1: list[dict[str, Any]] = []
        base = simulate_reference(wl, cfg, trace=t0)
        zero = simulate_reference(wl, dict(cfg, swap=0, prefetch=False), trace=t1)
        _assert_same_results(base, zero)
        assert t0 == t1
        assert base["metrics"]["swaps"] == 0 and base["metrics"]["prefetched_blocks"] == 0
        if not cfg["enable_prefix_caching"]:
            t2: list[dict[str, Any]] = []
            on = simulate_reference(wl, dict(cfg, swap=1, prefetch=1), trace=t2)
            _assert_same_results(base, on)
            assert t0 == t2


def test_random_lanes_with_swap_and_prefetch_invariants() -> None:
    # Every feasible lane completes; swapped KV and the cache entries together never
    # exceed the swap tier; no iteration both swaps in and out; dt = dtc + exposed
    # and exposed + hidden = x(n*); swapped KV is all back at the end.
    rng = np.random.default_rng(17)
    num_swaps = num_prefetched = num_feasible = 0
    for _ in range(200):
        wl, cfg = _random_lane(rng)
        cfg = dict(cfg, swap=1, prefetch=1)
        trace: list[dict[str, Any]] = []
        res = simulate_reference(wl, cfg, trace=trace)
        if res["infeasible"]:
            continue
        num_feasible += 1
        assert res["completed"].all()
        caps = cfg["tier_capacity_blocks"]
        ts = next((t for t, cap in enumerate(caps, start=1) if cap > 0), None)
        for it in trace:
            assert it["dt"] == it["dt_compute"] + it["exposed_s"]
            assert it["exposed_s"] + it["hidden_s"] == approx(it["xfer_s"])
            assert not (it["swapped_in"] and it["swapped_out"])
            assert set(it["swapped_out"]) <= set(it["preempted"])
            if ts is None:
                assert it["swapped_out"] == [] and it["swap_used"] == 0
            else:
                assert it["entries"][ts] + it["swap_used"] <= caps[ts - 1]
        assert trace[-1]["swap_used"] == 0
        assert res["metrics"]["swaps"] <= res["total_preemptions"]
        assert res["metrics"]["prefetched_blocks"] == sum(len(it["prefetched"])
                                                          for it in trace)
        num_swaps += res["metrics"]["swaps"]
        num_prefetched += res["metrics"]["prefetched_blocks"]
    assert num_feasible > 80 and num_swaps > 5 and num_prefetched > 5
