"""Hand-worked tests of §5 (prefix caching, KV memory tiers) in the reference oracle.

Every expected number is worked out by hand from docs/semantics.md in the comments.
Like tests/test_reference_sanity.py these tests never import jaxsim: they check the
oracle (tests/reference/event_sim.py) against the specification on its own.

The base config is the hand-checkable one of tests/test_reference_sanity.py (copied
here so that this file only depends on the oracle): one layer, h = 2, one head of
dimension 2, FFN 4, vocab 8, 1-byte weights and KV, peak = hbm = link = 1, all
efficiencies 0.5, F0 = B0 = 0, kernel overhead 1 s, cpu_iter 10 s, cpu_seq 100 s,
p = 1 (smax is a plain sum). For tp = 1:

    gemm(M, K, N, W) = 4MKN + 2W + 4MK + 4MN + 1,   mem(B) = 2B + 1,
    nh_g = nkv_g = 1, f_g = 4, V_g = 8, kvb = 4 bytes per token.

Per layer for T tokens of ONE prefill request with c = 0 (Ap = T(T+1)/2, Kp = T):

    qkv = 80T + 25, o = 32T + 9, up = 104T + 33, down = 56T + 17,
    attnp = 2·(8·Ap) + 2·(8T + 4T) + 1 = 8T(T+1) + 24T + 1,
    elem = 2(16T+1) + 2(24T+1) + (48T+1) + (32T+1) + (16T+1) = 176T + 7,
    layer = 8T² + 480T + 92;  embed = fnorm = 16T + 1;  cpu = 10 + 100 = 110.

So the §5.3 C(x) (one prefill, c = 0, q = x, no sampling) is

    C(x) = 8x² + 512x + 204,     C(1) = 724, C(4) = 2380, C(4) − C(1) = 1656,

and the same prefill when it samples (c + q = n_known) costs C(x) + lmhead + sample
= C(x) + gemm(1, 2, 8, 16) + mem(32) = C(x) + 137 + 65 = C(x) + 202:
x = 8 -> 5014, x = 12 -> 7702.

Cache blocks: U = 4 tokens (= block_size), so Bblk = U·2·L·nkv_g·hd·bw_kv
= 4·2·1·1·2·1 = 16 bytes.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from tests.reference.event_sim import (
    CONFIG_KEYS,
    OPTIONAL_CONFIG_KEYS,
    CostModel,
    PrefixCache,
    iteration_time,
    simulate_reference,
    validate_config,
)

_GEMMS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head")
_ELEMS = ("norm", "residual_add", "activation", "rotary", "kv_write", "embedding", "sampling")

BASE: dict[str, Any] = {
    "mode": "v1",
    "enable_chunked_prefill": True,
    "max_num_seqs": 8,
    "max_num_batched_tokens": 64,
    "long_prefill_token_threshold": 0,
    "block_size": 4,
    "num_gpu_blocks": 64,
    "watermark_blocks": 0,
    "max_model_len": 64,
    "tp": 1,
    "num_layers": 1,
    "hidden_size": 2,
    "num_heads": 1,
    "num_kv_heads": 1,
    "head_dim": 2,
    "ffn_size": 4,
    "vocab_size": 8,
    "num_experts": 1,
    "experts_per_token": 1,
    "bytes_per_weight": 1,
    "bytes_per_kv": 1,
    "peak_flops": 1.0,
    "hbm_bw": 1.0,
    "link_bw": 1.0,
    "ar_latency_s": 0.0,
    "eta_ar": 0.5,
    "kernel_overhead_s": 1.0,
    "cpu_iter_s": 10.0,
    "cpu_seq_s": 100.0,
    "smooth_p": 1.0,
    "ttft_slo_s": 1e12,
    "tpot_slo_s": 1e12,
}
for _op in (*_GEMMS, "attn_prefill", "attn_decode"):
    BASE.update({f"eta_c_{_op}": 0.5, f"f0_{_op}": 0.0, f"eta_m_{_op}": 0.5, f"b0_{_op}": 0.0})
for _g in _ELEMS:
    BASE.update({f"eta_m_{_g}": 0.5, f"b0_{_g}": 0.0})

# One lower tier (host memory) with round numbers: read 0.5 B/s, write 0.25 B/s,
# latency 3 s, behind link 0 of 0.125 B/s. Loading one block alone takes
# max(3 + 16/0.5, 16/0.125) = max(35, 128) = 128 <= C(4) - C(1) = 1656: usable.
TIER1: dict[str, Any] = {
    "tier_capacity_blocks": [8],
    "tier_read_bw": [0.5],
    "tier_write_bw": [0.25],
    "tier_latency_s": [3.0],
    "tier_link": [0],
    "tier_link_bw": [0.125],
}


def make_config(**overrides: Any) -> dict[str, Any]:
    cfg = dict(BASE)
    for key in overrides:
        assert key in cfg or key in OPTIONAL_CONFIG_KEYS, key
    cfg.update(overrides)
    return cfg


def make_workload(
    arrival: list[float],
    prompt: list[int],
    output: list[int],
    hashes: list[list[int]] | None = None,
    U: int = 4,
) -> dict[str, Any]:
    wl: dict[str, Any] = {
        "arrival_s": np.asarray(arrival, dtype=np.float64),
        "prompt_tokens": np.asarray(prompt, dtype=np.int64),
        "output_tokens": np.asarray(output, dtype=np.int64),
    }
    if hashes is not None:
        wl["hash_ids"] = hashes
        wl["hash_block_tokens"] = U
    return wl


def run(
    wl: dict[str, Any], **overrides: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    trace: list[dict[str, Any]] = []
    res = simulate_reference(wl, make_config(**overrides), trace=trace)
    return res, trace


def approx(x: float) -> Any:
    return pytest.approx(x, rel=1e-12, abs=1e-9)


def test_config_keys_unchanged_and_optional_keys_accepted() -> None:
    assert len(CONFIG_KEYS) == 74
    assert not set(OPTIONAL_CONFIG_KEYS) & set(CONFIG_KEYS)
    cfg = validate_config(make_config(enable_prefix_caching=1, **TIER1))
    assert cfg["enable_prefix_caching"] is True
    assert cfg["tier_capacity_blocks"] == (8,)
    assert cfg["tier_link_bw"] == {0: 0.125}
    # A mapping {link id: bandwidth} is accepted as well.
    cfg = validate_config(make_config(**dict(TIER1, tier_link=[3], tier_link_bw={3: 2.0})))
    assert cfg["tier_link_bw"] == {3: 2.0}
    # Defaults when absent.
    cfg = validate_config(make_config())
    assert cfg["enable_prefix_caching"] is False and cfg["tier_capacity_blocks"] == ()
    assert (cfg["w_rec"], cfg["w_freq"], cfg["w_depth"], cfg["load_overlap"]) == (
        1.0, 0.0, 0.0, 0.0,
    )
    # §5.8 / §5.9 defaults: w_adm 0, window 1, energy inputs unknown (NaN) per tier.
    assert (cfg["w_adm"], cfg["adm_window"]) == (0.0, 1)
    assert cfg["tier_static_power_w"] == () and cfg["tier_energy_pj_per_bit"] == ()
    cfg = validate_config(make_config(**TIER1))
    assert all(math.isnan(v) for v in cfg["tier_static_power_w"])
    assert len(cfg["tier_energy_pj_per_bit"]) == 1
    assert math.isnan(cfg["tier_energy_pj_per_bit"][0])
    cfg = validate_config(
        make_config(w_adm=2, adm_window=3.0, tier_static_power_w=[1.5],
                    tier_energy_pj_per_bit=[float("nan")], **TIER1)
    )
    assert (cfg["w_adm"], cfg["adm_window"]) == (2.0, 3)
    assert cfg["tier_static_power_w"] == (1.5,)
    assert math.isnan(cfg["tier_energy_pj_per_bit"][0])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({**TIER1, "tier_read_bw": [1.0, 2.0]}, "tier_read_bw"),
        ({**TIER1, "tier_latency_s": []}, "tier_latency_s"),
        ({**TIER1, "tier_write_bw": [0.0]}, "tier_write_bw"),
        ({**TIER1, "tier_read_bw": [-1.0]}, "tier_read_bw"),
        ({**TIER1, "tier_capacity_blocks": [-1]}, "tier_capacity_blocks"),
        ({**TIER1, "tier_latency_s": [-1.0]}, "tier_latency_s"),
        ({**TIER1, "tier_link_bw": [0.0]}, "tier_link_bw"),
        ({**TIER1, "tier_link": [1]}, "tier_link"),
        ({"load_overlap": 1.5}, "load_overlap"),
        ({"load_overlap": -0.1}, "load_overlap"),
        ({"w_freq": -1.0}, "w_freq"),
        ({"enable_prefix_caching": "yes"}, "enable_prefix_caching"),
        ({"w_adm": -0.5}, "w_adm"),
        ({"w_adm": float("inf")}, "w_adm"),
        ({"w_adm": 1e39}, "w_adm"),  # overflows float32
        ({"adm_window": 0}, "adm_window"),
        ({"adm_window": 1.5}, "adm_window"),
        ({**TIER1, "tier_static_power_w": [1.0, 2.0]}, "tier_static_power_w"),
        ({**TIER1, "tier_static_power_w": [-1.0]}, "tier_static_power_w"),
        ({**TIER1, "tier_energy_pj_per_bit": [float("inf")]}, "tier_energy_pj_per_bit"),
        ({"tier_energy_pj_per_bit": [1.0]}, "tier_energy_pj_per_bit"),
    ],
)
def test_invalid_prefix_config_names_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        validate_config(make_config(**overrides))


def test_invalid_hash_workload() -> None:
    cfg = make_config(enable_prefix_caching=True)
    with pytest.raises(ValueError, match="hash_ids"):
        simulate_reference(make_workload([0.0], [4], [1], [[1], [2]]), cfg)
    with pytest.raises(ValueError, match="hash_block_tokens"):
        simulate_reference(make_workload([0.0], [4], [1], [[1]], U=0), cfg)
    wl = make_workload([0.0], [4], [1], [[1]])
    del wl["hash_block_tokens"]
    with pytest.raises(KeyError, match="hash_block_tokens"):
        simulate_reference(wl, cfg)


# --------------------------------------------------------------------------------------
# §5.3 and §5.2 building blocks
# --------------------------------------------------------------------------------------


def test_c_of_x_and_bblk_by_hand() -> None:
    cost = CostModel(validate_config(make_config()))
    assert cost.prefill_time_no_sample(1) == approx(724.0)
    assert cost.prefill_time_no_sample(4) == approx(2380.0)
    # A partial prefill (does not sample) of x = 2 is the 1260 of the sanity tests.
    assert cost.prefill_time_no_sample(2) == approx(
        iteration_time(make_config(), [(2, 0, 4, 0)])
    )
    cache = PrefixCache(validate_config(make_config(**TIER1)), cost, 4)
    assert cache.bblk == 16.0
    assert cache.usable == [True, True]


@pytest.mark.parametrize(
    ("overrides", "usable"),
    [
        # load = max(lat + 32, 128): lat = 1624 -> 1656 <= 1656 (usable, boundary).
        ({"tier_latency_s": [1624.0]}, True),
        ({"tier_latency_s": [1624.5]}, False),
        # link alone: 16 / lbw <= 1656 iff lbw >= 16/1656.
        ({"tier_link_bw": [16.0 / 1600.0]}, True),
        ({"tier_link_bw": [16.0 / 1700.0]}, False),
        # a disabled tier (cap 0) is never usable.
        ({"tier_capacity_blocks": [0]}, False),
    ],
)
def test_usable_tier_rule(overrides: dict[str, Any], usable: bool) -> None:
    cfg = validate_config(make_config(**dict(TIER1, **overrides)))
    assert PrefixCache(cfg, CostModel(cfg), 4).usable == [True, usable]


def test_eviction_order_score_and_ties() -> None:
    cfg = validate_config(make_config(w_rec=1.0, w_freq=0.0, w_depth=1.0))
    cache = PrefixCache(cfg, CostModel(cfg), 4)
    from tests.reference.event_sim import _Entry

    # score = last - depth: A 5-0 = 5, B 5-2 = 3, C 4-1 = 3, D 3-0 = 3, E 6-0 = 6.
    # Order: score 3 {B depth 2, C depth 1, D depth 0} (larger depth first), A, E.
    for block, (last, depth) in {
        10: (5, 0), 11: (5, 2), 12: (4, 1), 13: (3, 0), 14: (6, 0)
    }.items():
        cache.entries[block] = _Entry(tier=0, last=last, hits=1, depth=depth)
    assert cache.eviction_order([10, 11, 12, 13, 14]) == [11, 12, 13, 10, 14]
    # Equal score and depth: smaller block id first.
    cache.entries[9] = _Entry(tier=0, last=5, hits=7, depth=2)
    assert cache.eviction_order([11, 9]) == [9, 11]
    # float32: 2^24 + 1 rounds to 2^24, so last = 2^24 + 1 ties with last = 2^24
    # and the larger depth goes first.
    cfg = validate_config(make_config())
    cache = PrefixCache(cfg, CostModel(cfg), 4)
    cache.entries[1] = _Entry(tier=0, last=2**24 + 1, hits=1, depth=0)
    cache.entries[2] = _Entry(tier=0, last=2**24, hits=1, depth=1)
    assert cache.eviction_order([1, 2]) == [2, 1]


def test_touch_depth_is_smallest_j_of_the_creators() -> None:
    # Two requests of RUN register the same new block 7 at j = 2 and j = 0 in one
    # iteration: depth = 0 (the smallest j), hits = 1. Block 5 (created at j = 0 by
    # the first) is touched at j = 1 by the second: depth stays 0.
    cfg = validate_config(make_config())
    cache = PrefixCache(cfg, CostModel(cfg), 4)
    run_info = [([5, 6, 7], 12, True), ([7, 5], 8, True)]
    read, written, evicted = cache.update(0, [], run_info, 64, 4)
    assert cache.entries[7].depth == 0 and cache.entries[7].hits == 1
    assert cache.entries[5].depth == 0 and cache.entries[6].depth == 1
    assert read == [0.0] and written == [0.0] and evicted == []


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


def test_two_sequential_requests_sharing_two_blocks() -> None:
    # r0 (t = 0): P = 8, O = 1, hashes [1, 2]. Nothing cached: a prefill of 8 tokens,
    # dt = C(8) + 202 = 5014. Retire: c = 8; touch j < min(2, 8 // 4) = 2: blocks 1, 2.
    # r1 (t = 10000, idle): P = 10, O = 1, hashes [1, 2, 3]:
    #   kmax = min(3, floor(9/4)) = 2, both cached in HBM -> h = 8, q = 2,
    #   need = ceil(10/4) = 3. Its batch (q 2, c 8, n_known 10, g 0):
    #   T = 2, ns = 1, Tp = 2, Ap = 2·(8 + 3/2) = 19, Kp = 10.
    #   qkv 185, o 73, up 241, down 129 (as any T = 2 batch), elem 359,
    #   attnp: F = 4·2·19 = 152, B = 2·2·2·2 + 4·10 = 56 -> 304 + 112 + 1 = 417,
    #   layer = 185 + 73 + 241 + 129 + 417 + 359 = 1404,
    #   dt = 1404 + 33 + 33 + 137 + 65 + 110 = 1782 = its TTFT.
    wl = make_workload([0.0, 10000.0], [8, 10], [1, 1], [[1, 2], [1, 2, 3]])
    res, trace = run(wl, enable_prefix_caching=True)
    assert [it["batch"] for it in trace] == [[(0, 8, 0, 8, 0)], [(1, 2, 8, 10, 0)]]
    assert res["ttft_s"][0] == approx(5014.0)
    assert res["ttft_s"][1] == approx(1782.0)
    assert res["ttft_s"][1] == approx(iteration_time(make_config(), [(2, 8, 10, 0)]))
    assert list(res["tokens_scheduled"]) == [8, 2]
    assert res["hit_tokens_by_tier"] == [8]
    assert res["admitted_prompt_tokens"] == 18
    assert res["prefix_hit_rate"] == approx(8 / 18)
    assert res["metrics"]["prefix_hit_rate"] == approx(8 / 18)
    assert res["hit_rate_by_tier"] == [approx(8 / 18)]
    assert trace[1]["hit_blocks"] == [(1, 2, [0, 0])]
    # Nothing moved between tiers: no transfer time, dt = dtc.
    assert res["bytes_read_by_tier"] == [0.0] and res["bytes_written_by_tier"] == [0.0]
    assert res["xfer_exposed_s"] == 0.0 and res["xfer_hidden_s"] == 0.0
    # r1's touch: j < min(3, 10 // 4 = 2): block 3 is not full, never registered.
    assert res["peak_entries_by_tier"] == [2]
    # Without prefix caching r1 prefills all 10 tokens: 8·100 + 5120 + 204 + 202.
    res_off, _ = run(wl)
    assert res_off["ttft_s"][1] == approx(6326.0)
    assert res_off["hit_tokens_by_tier"] == [0] and res_off["prefix_hit_rate"] == 0.0


def test_identical_prompt_hits_at_most_kmax_blocks() -> None:
    # r1 repeats r0's prompt (P = 8, hashes [1, 2]). kmax = min(2, floor(7/4)) = 1:
    # the last prompt token is always computed, so h = 4, q = 4.
    wl = make_workload([0.0, 10000.0], [8, 8], [1, 1], [[1, 2], [1, 2]])
    res, trace = run(wl, enable_prefix_caching=True)
    assert trace[1]["batch"] == [(1, 4, 4, 8, 0)]
    assert res["hit_tokens_by_tier"] == [4]


def test_v0_prefill_batch_with_hit() -> None:
    # v0 (no chunking): an admitted request is scheduled q = n_known - h tokens.
    wl = make_workload([0.0, 10000.0], [8, 10], [1, 1], [[1, 2], [1, 2, 3]])
    res, trace = run(wl, enable_prefix_caching=True, mode="v0")
    assert [it["batch"] for it in trace] == [[(0, 8, 0, 8, 0)], [(1, 2, 8, 10, 0)]]
    assert all(it["kind"] == "prefill" for it in trace)
    assert res["ttft_s"][1] == approx(1782.0)


def test_finite_hbm_cache_evicts_in_lru_order() -> None:
    # num_gpu_blocks = 4 (block_size = U = 4), max_model_len = 16; requests far apart.
    # it 0: r0 P 8 O 1 [10, 11] -> entries 10, 11 (last 0, depth 0, 1). Finished:
    #       free 4, cap_0 = 4·4/4 = 4, 2 entries: nothing evicted.
    # it 1: r1 P 8 O 1 [20, 21] (miss) -> entries 20, 21 (last 1). 4 <= 4.
    # it 2: r2 P 8 O 3 [30, 31] prefill; still running: 30, 31 pinned; it holds
    #       ceil(8/4) = 2 blocks -> free 2, cap_0 = 2. Unpinned tier-0: 10, 11, 20,
    #       21 -> evict 2 in LRU order: last 0 first, deeper first: 11, then 10
    #       (dropped: no lower tier).
    # it 3: r2 decode, c 8 -> 9 holds 3 blocks -> cap_0 = 1; unpinned 20, 21 ->
    #       evict 21 (last 1, depth 1 before depth 0).
    # it 4: r2 decode, c 9 -> 10, finishes; free 4, cap_0 = 4, entries 20, 30, 31.
    # it 5: r3 P 9 O 1 [20, 21]: kmax = min(2, floor(8/4)) = 2; 20 cached, 21 not
    #       -> hit_blocks = 1, h = 4, q = 5. Touch registers 21 again: 4 entries.
    wl = make_workload(
        [0.0, 1e5, 2e5, 3e5],
        [8, 8, 8, 9],
        [1, 1, 3, 1],
        [[10, 11], [20, 21], [30, 31], [20, 21]],
    )
    res, trace = run(wl, enable_prefix_caching=True, num_gpu_blocks=4, max_model_len=16)
    assert not res["infeasible"] and res["completed"].all()
    assert [it["evicted"] for it in trace] == [
        [], [], [(11, 0, None), (10, 0, None)], [(21, 0, None)], [], [],
    ]
    assert [it["entries"] for it in trace] == [[2], [4], [4], [3], [3], [4]]
    assert trace[5]["batch"] == [(3, 5, 4, 9, 0)]
    assert trace[5]["hit_blocks"] == [(3, 1, [0])]
    assert res["ttft_s"][3] == approx(iteration_time(make_config(), [(5, 4, 9, 0)]))
    assert res["hit_tokens_by_tier"] == [4]
    assert res["admitted_prompt_tokens"] == 33
    assert res["peak_entries_by_tier"] == [4]


def _demotion_workload() -> dict[str, Any]:
    # r0 (t 0): P 8 [10, 11]; r1 (t 1e5): P 12 [20, 21, 22]; r2 (t 2e5): P 9 [10, 11].
    return make_workload(
        [0.0, 1e5, 2e5], [8, 12, 9], [1, 1, 1], [[10, 11], [20, 21, 22], [10, 11]]
    )


def test_block_demoted_to_tier1_then_hit() -> None:
    # num_gpu_blocks = 4, U = block_size = 4, tier 1 as TIER1 (cap 8), overlap f = 0.1.
    # it 0: r0 prefill 8: dtc = 5014, entries 10, 11 in HBM, no transfer.
    # it 1: r1 prefill 12: dtc = C(12) + 202 = 7702. Touch 20, 21, 22: 5 entries,
    #       cap_0 = 4 (all finished): evict 1 in LRU order: 11 (last 0, depth 1)
    #       -> demoted to tier 1: W_1 = 16. dev_1 = 16/0.25 + 3 = 67,
    #       link_0 = 16/0.125 = 128 -> x = 128; f·dtc = 770.2 >= 128: exposed 0,
    #       hidden 128, dt = 7702.
    # it 2: r2 P 9 [10, 11]: kmax = min(2, floor(8/4)) = 2: 10 in tier 0, 11 in
    #       tier 1 (usable) -> hit_blocks 2 (tiers [0, 1]), h = 8, q = 1. Batch
    #       (q 1, c 8, n_known 9, g 0): T = 1, ns = 1, Ap = 1·(8 + 1) = 9, Kp = 9:
    #       qkv 105, o 41, up 137, down 73, elem 183,
    #       attnp: F = 4·2·9 = 72, B = 2·2·1·2 + 4·9 = 44 -> 144 + 88 + 1 = 233,
    #       layer = 772; dtc = 772 + 17 + 17 + 137 + 65 + 110 = 1118.
    #       Update: step 1 loads 11 from tier 1: R_1 = 16. Step 2 touches 10, 11
    #       (-> tier 0, last 2). Step 4: 5 tier-0 entries, cap_0 = 4: evict the LRU
    #       one among 20, 21, 22 (last 1): the deepest, 22 -> tier 1: W_1 = 16.
    #       dev_1 = 16/0.5 + 16/0.25 + 3 = 99; link_0 (full duplex) =
    #       max(16, 16)/0.125 = 128 -> x = 128; exposed = 128 - 0.1·1118 = 16.2,
    #       hidden = 111.8, dt = 1134.2 (TTFT).
    res, trace = run(
        _demotion_workload(),
        enable_prefix_caching=True,
        num_gpu_blocks=4,
        max_model_len=16,
        load_overlap=0.1,
        **TIER1,
    )
    assert [it["batch"] for it in trace] == [
        [(0, 8, 0, 8, 0)], [(1, 12, 0, 12, 0)], [(2, 1, 8, 9, 0)],
    ]
    assert [it["dt_compute"] for it in trace] == [approx(5014.0), approx(7702.0),
                                                  approx(1118.0)]
    assert [it["xfer_s"] for it in trace] == [0.0, approx(128.0), approx(128.0)]
    assert [it["evicted"] for it in trace] == [[], [(11, 0, 1)], [(22, 0, 1)]]
    assert trace[2]["hit_blocks"] == [(2, 2, [0, 1])]
    assert trace[2]["bytes_read"] == [0.0, 16.0]
    assert [it["dt"] for it in trace] == [approx(5014.0), approx(7702.0),
                                          approx(1134.2)]
    assert list(res["ttft_s"]) == [approx(5014.0), approx(7702.0), approx(1134.2)]
    assert res["busy_s"] == approx(5014.0 + 7702.0 + 1134.2)
    assert res["bytes_read_by_tier"] == [0.0, 16.0]
    assert res["bytes_written_by_tier"] == [0.0, 32.0]
    assert res["xfer_exposed_s"] == approx(16.2)
    assert res["xfer_hidden_s"] == approx(128.0 + 111.8)
    assert res["hit_tokens_by_tier"] == [4, 4]
    assert res["admitted_prompt_tokens"] == 29
    assert res["prefix_hit_rate"] == approx(8 / 29)
    assert res["hit_rate_by_tier"] == [approx(4 / 29), approx(4 / 29)]
    # Entries per tier after step 5: it 0 [2, 0]; it 1 [4, 1]; it 2 [4, 1]
    # (11 left tier 1, 22 entered it).
    assert [it["entries"] for it in trace] == [[2, 0], [4, 1], [4, 1]]
    assert res["peak_entries_by_tier"] == [4, 1]
    # KV occupancy weights used blocks (2, 3, 3) by dt = dtc + exposed.
    busy = 5014.0 + 7702.0 + 1134.2
    assert res["kv_occupancy_mean"] == approx(
        (2 * 5014.0 + 3 * 7702.0 + 3 * 1134.2) / busy / 4
    )


def test_unusable_tier_is_written_but_never_hit() -> None:
    # Same lane with latency 2000 s: load = 2032 > 1656, tier 1 is unusable. Block
    # 11 is still demoted there at it 1 (written), but at it 2 it is a miss:
    # hit_blocks = 1 (h = 4, q = 5), no read; the touch moves 11 back to HBM without
    # a read, and 22 is demoted (written).
    res, trace = run(
        _demotion_workload(),
        enable_prefix_caching=True,
        num_gpu_blocks=4,
        max_model_len=16,
        **dict(TIER1, tier_latency_s=[2000.0]),
    )
    assert trace[2]["batch"] == [(2, 5, 4, 9, 0)]
    assert res["hit_tokens_by_tier"] == [4, 0]
    assert res["bytes_read_by_tier"] == [0.0, 0.0]
    assert res["bytes_written_by_tier"] == [0.0, 32.0]
    # it 1 and it 2 each write 16 bytes: dev_1 = 16/0.25 + 2000 = 2064 > link 128,
    # overlap 0, so exposed = 2064 each time.
    assert res["xfer_exposed_s"] == approx(2 * 2064.0)
    assert [it["dt"] - it["dt_compute"] for it in trace] == [
        0.0, approx(2064.0), approx(2064.0)
    ]


def _assert_same_results(a: dict[str, Any], b: dict[str, Any], skip: set[str]) -> None:
    # The §5.9 energy metrics exist per lower tier, so lanes with different tier
    # lists have different energy keys: they are left out of this comparison.
    assert set(a) == set(b)
    for key, va in a.items():
        if key in skip:
            continue
        vb = b[key]
        if key == "metrics":
            va = {mk: v for mk, v in va.items() if not mk.startswith("energy_")}
            vb = {mk: v for mk, v in vb.items() if not mk.startswith("energy_")}
            assert set(va) == set(vb)
            for mk in va:
                assert va[mk] == vb[mk] or (math.isnan(va[mk]) and math.isnan(vb[mk])), mk
        elif isinstance(va, np.ndarray):
            assert np.array_equal(va, vb, equal_nan=True), key
        elif isinstance(va, float) and math.isnan(va):
            assert math.isnan(vb), key
        else:
            assert va == vb, key


def test_zero_capacity_tier_is_identical_to_no_tier() -> None:
    # A tier with cap 0 is disabled: never usable, never a demotion target (the
    # evicted entries are dropped exactly as without it), so no transfer at all.
    wl = _demotion_workload()
    common = {"enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16}
    res0, trace0 = run(wl, **common)
    res1, trace1 = run(wl, **common, **dict(TIER1, tier_capacity_blocks=[0]))
    per_tier = {
        "hit_tokens_by_tier", "hit_rate_by_tier", "bytes_read_by_tier",
        "bytes_written_by_tier", "peak_entries_by_tier",
    }
    _assert_same_results(res0, res1, per_tier)
    for key in per_tier:
        assert res1[key][:1] == res0[key]
        assert res1[key][1] == 0
    assert [it["dt"] for it in trace0] == [it["dt"] for it in trace1]
    assert [it["evicted"] for it in trace0] == [it["evicted"] for it in trace1]
    # Without the tier block 11 was dropped, so r2 only hits block 10.
    assert trace0[2]["batch"] == [(2, 5, 4, 9, 0)]
    assert trace0[1]["evicted"] == [(11, 0, None)]


def _random_lane(
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, Any]]:
    R = int(rng.integers(1, 12))
    mml = int(rng.integers(8, 40))
    P = rng.integers(1, mml // 2 + 1, R)
    O = rng.integers(1, mml // 2 + 1, R)
    arrival = np.round(rng.exponential(800.0, R).cumsum() * rng.integers(0, 2))
    rng.shuffle(arrival)
    # U >= 2: with U = 1, C(U) - C(1) = 0 and no lower tier is ever usable (§5.3).
    U = int(rng.integers(2, 5))
    # Prefixes drawn from a small tree so that requests share leading blocks.
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
    # Mostly a tight HBM (near the feasibility minimum) so that blocks get evicted.
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
    )
    return wl, cfg


def test_random_lanes_with_prefix_caching_invariants() -> None:
    # Random lanes with caching on: every feasible lane completes, hits never exceed
    # the admitted prompts, a lower tier never holds more than its capacity, bytes
    # move in whole blocks, dt = dtc + exposed, and ~250 lanes take well under a few
    # seconds.
    rng = np.random.default_rng(3)
    num_feasible = num_hits = num_lower_hits = 0
    start = time.perf_counter()
    for _ in range(250):
        wl, cfg = _random_lane(rng)
        trace: list[dict[str, Any]] = []
        res = simulate_reference(wl, cfg, trace=trace)
        if res["infeasible"]:
            continue
        num_feasible += 1
        assert res["completed"].all() and (res["generated"] == wl["output_tokens"]).all()
        assert res["admitted_prompt_tokens"] == int(np.sum(wl["prompt_tokens"]))
        assert 0.0 <= res["prefix_hit_rate"] <= 1.0
        assert sum(res["hit_tokens_by_tier"]) <= res["admitted_prompt_tokens"]
        num_hits += sum(res["hit_tokens_by_tier"]) > 0
        num_lower_hits += sum(res["hit_tokens_by_tier"][1:]) > 0
        caps = cfg["tier_capacity_blocks"]
        for t, cap in enumerate(caps, start=1):
            assert res["peak_entries_by_tier"][t] <= cap
        bblk = wl["hash_block_tokens"] * 2 * 1 * 1 * 2 * 1
        for key in ("bytes_read_by_tier", "bytes_written_by_tier"):
            assert res[key][0] == 0.0
            assert all(v % bblk == 0 for v in res[key])
        for it in trace:
            assert it["dt"] == it["dt_compute"] + it["exposed_s"]
            assert it["exposed_s"] + it["hidden_s"] == approx(it["xfer_s"])
            assert it["used_blocks"] <= cfg["num_gpu_blocks"]
        assert res["busy_s"] == approx(sum(it["dt"] for it in trace))
    elapsed = time.perf_counter() - start
    assert num_feasible > 100 and num_hits > 40 and num_lower_hits > 8
    assert elapsed < 10.0


def test_prefix_caching_off_ignores_the_optional_inputs() -> None:
    # With enable_prefix_caching off, hashes and tiers change nothing (§5: "with it
    # off the lane behaves exactly as §1-§4 describe"); with it on but no hashes,
    # nothing is cached or moved, so the lane is again identical.
    rng = np.random.default_rng(5)
    skip = {"hit_tokens_by_tier", "hit_rate_by_tier", "bytes_read_by_tier",
            "bytes_written_by_tier", "peak_entries_by_tier"}
    for _ in range(100):
        wl, cfg = _random_lane(rng)
        plain_wl = {k: wl[k] for k in ("arrival_s", "prompt_tokens", "output_tokens")}
        plain_cfg = {k: cfg[k] for k in CONFIG_KEYS}
        t0: list[dict[str, Any]] = []
        t1: list[dict[str, Any]] = []
        t2: list[dict[str, Any]] = []
        base = simulate_reference(plain_wl, plain_cfg, trace=t0)
        off = simulate_reference(wl, dict(cfg, enable_prefix_caching=False), trace=t1)
        on_no_hashes = simulate_reference(plain_wl, cfg, trace=t2)
        _assert_same_results(base, off, skip)
        _assert_same_results(base, on_no_hashes, skip)
        assert t0 == t1
        assert [it["dt"] for it in t0] == [it["dt"] for it in t2]
        assert [it["batch"] for it in t0] == [it["batch"] for it in t2]
        assert sum(off["hit_tokens_by_tier"]) == 0
        assert sum(on_no_hashes["bytes_written_by_tier"]) == 0.0


# --------------------------------------------------------------------------------------
# §5.8 admission order (context-aware scheduling)
# --------------------------------------------------------------------------------------


def _admission_workload() -> dict[str, Any]:
    # r0 (t 0): P 8 O 1 [1, 2]; r1 (t 100): P 8 O 1 [5, 6]; r2 (t 150): P 8 O 1 [7, 8];
    # r3 (t 200): P 10 O 1 [1, 2, 3] (its first two blocks are r0's).
    return make_workload(
        [0.0, 100.0, 150.0, 200.0],
        [8, 8, 8, 10],
        [1, 1, 1, 1],
        [[1, 2], [5, 6], [7, 8], [1, 2, 3]],
    )


# Hand-worked schedule of _admission_workload with max_num_seqs = 1 (one admission
# per iteration), U = block_size = 4, 64 GPU blocks (nothing is ever evicted).
# it 0 (clock 0): r0 alone, prefill 8: dt = C(8) + 202 = 5014. Blocks 1, 2 cached.
# r1, r2, r3 arrive during it 0, so at 5014 waiting = [r1 (p 0), r2 (p 1), r3 (p 2)].
# Lookups: r1, r2 hit nothing; r3 kmax = min(3, floor(9/4)) = 2, blocks 1 and 2 in
# HBM: hit_blocks = 2, h = 8, q = 2, dt = 1782 (as in the two-request test above).
# A miss of 8 tokens costs 5014. key = p - w_adm·hit_blocks for p < W, else p.
#
# W = 1 (or w_adm = 0): plain FCFS.
#   it 1 @5014 keys (0, 1, 2): r1, 5014 -> 10028. it 2: r2 -> 15042.
#   it 3: r3 -> 15042 + 1782 = 16824.
# W = 2, w_adm = 2:
#   it 1 @5014 keys r1 0, r2 1, r3 2 (p = 2 is outside the window, key = 2): r1
#       (r3 is NOT preferred), -> 10028.
#   it 2 @10028 waiting [r2 (p 0), r3 (p 1)]: r3 is now inside the window, key
#       1 - 2·2 = -3 < 0: r3 jumps r2, -> 11810. it 3: r2 -> 16824.
# W = 3, w_adm = 2:
#   it 1 @5014 keys r1 0, r2 1, r3 2 - 4 = -2: r3 first, -> 6796; r1 is skipped
#       (max_num_seqs reached) and stays at the front, never admitted.
#   it 2 @6796: r1 -> 11810 (its first admission: queue = 6796 - 100 = 6696).
#   it 3 @11810: r2 -> 16824.
# W = 3, w_adm = 1 (a tie): it 1 keys r1 0, r2 1, r3 2 - 2 = 0: (0, p 0) < (0, p 2),
#   so r1 first, as with W = 2; it 2 [r2 key 0, r3 key 1 - 2 = -1]: r3; it 3 r2.
_FCFS_ADMITTED = [0.0, 5014.0, 10028.0, 15042.0]
_FCFS_FIRST = [5014.0, 10028.0, 15042.0, 16824.0]
_W2_ADMITTED = [0.0, 5014.0, 11810.0, 10028.0]
_W2_FIRST = [5014.0, 10028.0, 16824.0, 11810.0]
_W3_ADMITTED = [0.0, 6796.0, 11810.0, 5014.0]
_W3_FIRST = [5014.0, 11810.0, 16824.0, 6796.0]


@pytest.mark.parametrize(
    ("w_adm", "window", "admitted", "first"),
    [
        (0.0, 3, _FCFS_ADMITTED, _FCFS_FIRST),
        (2.0, 1, _FCFS_ADMITTED, _FCFS_FIRST),
        (2.0, 2, _W2_ADMITTED, _W2_FIRST),
        (2.0, 3, _W3_ADMITTED, _W3_FIRST),
        (1.0, 3, _W2_ADMITTED, _W2_FIRST),
    ],
)
def test_admission_order_by_hand(
    w_adm: float, window: int, admitted: list[float], first: list[float]
) -> None:
    for mode in ("v1", "v0"):  # §5.8 applies to v1's waiting phase and v0's prefill batch
        res, trace = run(
            _admission_workload(),
            enable_prefix_caching=True,
            max_num_seqs=1,
            mode=mode,
            w_adm=w_adm,
            adm_window=window,
        )
        assert list(res["admitted_s"]) == [approx(v) for v in admitted]
        assert list(res["first_token_s"]) == [approx(v) for v in first]
        arrival = [0.0, 100.0, 150.0, 200.0]
        queue = [a - t for a, t in zip(admitted, arrival, strict=True)]
        ttft = [f - t for f, t in zip(first, arrival, strict=True)]
        assert list(res["queue_s"]) == [approx(v) for v in queue]
        assert list(res["ttft_s"]) == [approx(v) for v in ttft]
        # Whatever the order, r3's two hit blocks are counted once, at its admission.
        assert res["hit_tokens_by_tier"] == [8]
        assert res["admitted_prompt_tokens"] == 34
        assert res["metrics"]["duration_s"] == approx(16824.0)
        assert len(trace) == 4


def test_skipped_request_is_stamped_at_its_real_first_admission() -> None:
    # W = 3, w_adm = 2 (see above): at it 1 (clock 5014) r1 is walked after r3 and is
    # not admitted (max_num_seqs = 1); it is admitted at it 2 (clock 6796).
    res, trace = run(
        _admission_workload(), enable_prefix_caching=True, max_num_seqs=1,
        w_adm=2.0, adm_window=3,
    )
    assert [it["batch"] for it in trace] == [
        [(0, 8, 0, 8, 0)], [(3, 2, 8, 10, 0)], [(1, 8, 0, 8, 0)], [(2, 8, 0, 8, 0)],
    ]
    assert res["admitted_s"][1] == approx(6796.0)
    assert res["queue_s"][1] == approx(6796.0 - 100.0)
    assert res["queue_s"][3] == approx(5014.0 - 200.0)
    # With two slots the walk admits r3 then r1 at it 1 (appended to `running` in
    # walk order), then stops at r2 (rule 1). r3's batch entry comes first.
    res2, trace2 = run(
        _admission_workload(), enable_prefix_caching=True, max_num_seqs=2,
        w_adm=2.0, adm_window=3,
    )
    assert trace2[1]["batch"] == [(3, 2, 8, 10, 0), (1, 8, 0, 8, 0)]
    assert trace2[1]["hit_blocks"] == [(3, 2, [0, 0]), (1, 0, [])]
    assert res2["admitted_s"][1] == res2["admitted_s"][3] == approx(5014.0)
    # AMBIGUITY pinned down (oracle): the §2.3 walk condition "while budget > 0" still
    # holds in the §5.8 walk. With 8 tokens per iteration (chunked), it 1 admits r3
    # (q 2) and r1 (q 6, a chunk); the budget is then 0 and the phase ends, so r2 is
    # not admitted with q = 0.
    res3, trace3 = run(
        _admission_workload(), enable_prefix_caching=True, max_num_batched_tokens=8,
        w_adm=2.0, adm_window=3,
    )
    assert trace3[1]["batch"] == [(3, 2, 8, 10, 0), (1, 6, 0, 8, 0)]
    assert res3["admitted_s"][2] > res3["admitted_s"][1]


def test_w_adm_zero_is_identical_to_omitting_the_keys() -> None:
    # §5.8: "With w_adm = 0 this section changes nothing": bit for bit, traces too.
    # Also with prefix caching off every hit_blocks is 0, so any w_adm is FCFS.
    rng = np.random.default_rng(8)
    for i in range(40):
        wl, cfg = _random_lane(rng)
        if i % 2:
            cfg = dict(cfg, enable_prefix_caching=False)
        t0: list[dict[str, Any]] = []
        t1: list[dict[str, Any]] = []
        base = simulate_reference(wl, cfg, trace=t0)
        zero = simulate_reference(wl, dict(cfg, w_adm=0.0, adm_window=5), trace=t1)
        _assert_same_results(base, zero, set())
        assert t0 == t1
        if not cfg["enable_prefix_caching"]:
            t2: list[dict[str, Any]] = []
            heavy = simulate_reference(wl, dict(cfg, w_adm=7.0, adm_window=5), trace=t2)
            _assert_same_results(base, heavy, set())
            assert t0 == t2


# --------------------------------------------------------------------------------------
# §5.7 TTFT split
# --------------------------------------------------------------------------------------


def test_ttft_split_load_and_prefill_by_hand() -> None:
    # The demotion lane (num_gpu_blocks 4, TIER1) with overlap f = 0, r2 arriving
    # during r1's iteration and decoding 5 more tokens (O = 6; P + O = 15 <= 16).
    # r0 (t 0): P 8 O 1 [10, 11]; r1 (t 1e5): P 12 O 1 [20, 21, 22];
    # r2 (t 101000): P 9 O 6 [10, 11]. With f = 0, exposed = x every iteration.
    # it 0 @0: r0 prefill 8, dtc 5014, no transfer. load_0 = 0.
    # it 1 @1e5: r1 prefill 12, dtc 7702; 11 demoted to tier 1 (W_1 = 16):
    #      x = max(16/0.25 + 3, 16/0.125) = 128 = exposed (a write, but r1 was
    #      scheduled with g = 0, so it counts): load_1 = 128, ttft_1 = 7830.
    # it 2 @107830: r2 (queue 6830) hits 10 (tier 0) and 11 (tier 1): h 8, q 1,
    #      dtc 1118. r2 keeps running (3 blocks, free 1, cap_0 = 1): 10, 11 pinned,
    #      unpinned 20, 21, 22 -> evict 2 (deepest first) 22, 21 -> tier 1:
    #      R_1 = 16, W_1 = 32: dev = 32 + 128 + 3 = 163, link = max(16, 32)/0.125 =
    #      256 -> exposed 256 = load_2; first token @109204, ttft_2 = 8204.
    # it 3-5: decodes (c 9 -> 12, still 3 blocks, cap_0 = 1, unpinned {20}): no move.
    # it 6: decode c 12 -> 13 holds 4 blocks, cap_0 = 0: 20 demoted (W_1 = 16),
    #      x = 128 exposed, but r2 had g = 4 at the start: NOT part of load_2.
    # it 7: last decode, r2 finishes; nothing moves.
    # prefill_s = ttft - queue - load = dtc of the first-token iteration here:
    # [5014, 7830 - 0 - 128 = 7702, 8204 - 6830 - 256 = 1118].
    wl = make_workload(
        [0.0, 1e5, 1e5 + 1000.0], [8, 12, 9], [1, 1, 6], [[10, 11], [20, 21, 22], [10, 11]]
    )
    common = {"num_gpu_blocks": 4, "max_model_len": 16}
    res, trace = run(wl, enable_prefix_caching=True, load_overlap=0.0, **common, **TIER1)
    assert [it["exposed_s"] for it in trace] == [
        0.0, approx(128.0), approx(256.0), 0.0, 0.0, 0.0, approx(128.0), 0.0,
    ]
    assert trace[2]["hit_blocks"] == [(2, 2, [0, 1])]
    assert res["hit_tokens_by_tier"] == [4, 4]
    assert list(res["load_s"]) == [0.0, approx(128.0), approx(256.0)]
    assert list(res["queue_s"]) == [0.0, 0.0, approx(6830.0)]
    assert list(res["ttft_s"]) == [approx(5014.0), approx(7830.0), approx(8204.0)]
    assert list(res["prefill_s"]) == [approx(5014.0), approx(7702.0), approx(1118.0)]
    assert res["xfer_exposed_s"] == approx(512.0)  # 128 of it in a decode: not load
    m = res["metrics"]
    assert m["ttft_load_mean_s"] == approx(128.0)
    assert m["ttft_prefill_mean_s"] == approx((5014.0 + 7702.0 + 1118.0) / 3)
    # p99 of [0, 128, 256]: position 0.99·2 = 1.98 -> 128 + 0.98·128 = 253.44.
    assert m["ttft_load_p99_s"] == approx(253.44)

    # Prefix caching off: load_s = 0 for every finished request, prefill = ttft - queue.
    off, _ = run(wl, load_overlap=0.0, **common, **TIER1)
    assert list(off["load_s"]) == [0.0, 0.0, 0.0]
    assert np.array_equal(off["prefill_s"], off["ttft_s"] - off["queue_s"])
    assert off["metrics"]["ttft_load_mean_s"] == 0.0
    assert off["metrics"]["ttft_load_p99_s"] == 0.0

    # Unfinished requests (iteration budget 3: r2 has its first token, not finished)
    # are NaN like the other per-request latencies; the lane metrics use r0, r1.
    trunc = simulate_reference(
        wl,
        make_config(enable_prefix_caching=True, load_overlap=0.0, **common, **TIER1),
        max_iterations=3,
    )
    assert trunc["truncated"] and not trunc["completed"][2]
    assert math.isnan(trunc["load_s"][2]) and math.isnan(trunc["prefill_s"][2])
    assert trunc["metrics"]["ttft_load_mean_s"] == approx(64.0)
    # No completed request at all: NaN.
    none = simulate_reference(wl, make_config(**common), max_iterations=0)
    for key in ("ttft_load_mean_s", "ttft_prefill_mean_s", "ttft_load_p99_s"):
        assert math.isnan(none["metrics"][key])


# --------------------------------------------------------------------------------------
# §5.9 energy of the lower tiers
# --------------------------------------------------------------------------------------


def test_tier_energy_by_hand() -> None:
    # The demotion lane with f = 0 (all O = 1): dt = 5014, 7702 + 128, 1118 + 128
    # (see test_block_demoted_to_tier1_then_hit: it 1 writes 16 bytes, it 2 reads 16
    # and writes 16), so duration_s = last finish - first arrival = 2e5 + 1246 and
    # tier 1 moved Σ R_1 + Σ W_1 = 16 + 32 = 48 bytes = 384 bits.
    # energy_1 = pw·duration + eb·1e-12·8·48.
    common = {
        "enable_prefix_caching": True, "num_gpu_blocks": 4, "max_model_len": 16,
        "load_overlap": 0.0,
    }
    wl = _demotion_workload()
    res, _ = run(wl, **common, **TIER1, tier_static_power_w=[2.5],
                 tier_energy_pj_per_bit=[5.0])
    m = res["metrics"]
    assert m["duration_s"] == approx(201246.0)
    assert res["bytes_read_by_tier"] == [0.0, 16.0]
    assert res["bytes_written_by_tier"] == [0.0, 32.0]
    assert m["energy_j_tier1"] == pytest.approx(2.5 * 201246.0 + 5.0 * 1e-12 * 384, rel=1e-15)
    assert m["energy_tiers_j"] == m["energy_j_tier1"]
    # The per-bit part alone (no static power): 5 pJ/bit · 384 bits = 1.92e-9 J.
    res0, _ = run(wl, **common, **TIER1, tier_static_power_w=[0.0],
                  tier_energy_pj_per_bit=[5.0])
    assert res0["metrics"]["energy_j_tier1"] == pytest.approx(1.92e-9, rel=1e-12)

    # Unknown power (the default, or an explicit NaN) or unknown energy per bit: NaN.
    for energy in (
        {},
        {"tier_static_power_w": [float("nan")], "tier_energy_pj_per_bit": [5.0]},
        {"tier_static_power_w": [2.5], "tier_energy_pj_per_bit": [float("nan")]},
    ):
        r, _ = run(wl, **common, **TIER1, **energy)
        assert math.isnan(r["metrics"]["energy_j_tier1"])
        assert math.isnan(r["metrics"]["energy_tiers_j"])

    # Two lower tiers: the total is the sum, NaN as soon as one tier is unknown.
    two = {
        "tier_capacity_blocks": [8, 8], "tier_read_bw": [0.5, 0.5],
        "tier_write_bw": [0.25, 0.25], "tier_latency_s": [3.0, 3.0],
        "tier_link": [0, 0], "tier_link_bw": [0.125],
    }
    r2, _ = run(wl, **common, **two, tier_static_power_w=[2.5, 1.0],
                tier_energy_pj_per_bit=[5.0, 7.0])
    # Tier 2 never receives a block (tier 1 never overflows): static power only.
    assert r2["bytes_read_by_tier"][2] == 0.0 and r2["bytes_written_by_tier"][2] == 0.0
    assert r2["metrics"]["energy_j_tier2"] == approx(201246.0)
    assert r2["metrics"]["energy_tiers_j"] == approx(
        r2["metrics"]["energy_j_tier1"] + 201246.0
    )
    r3, _ = run(wl, **common, **two, tier_static_power_w=[2.5, float("nan")],
                tier_energy_pj_per_bit=[5.0, 7.0])
    assert r3["metrics"]["energy_j_tier1"] == approx(m["energy_j_tier1"])
    assert math.isnan(r3["metrics"]["energy_j_tier2"])
    assert math.isnan(r3["metrics"]["energy_tiers_j"])

    # No lower tier: no energy_j_tier{t} metric and a total of 0.0.
    r4, _ = run(wl, **dict(common, num_gpu_blocks=64))
    assert not [k for k in r4["metrics"] if k.startswith("energy_j_tier")]
    assert r4["metrics"]["energy_tiers_j"] == 0.0
