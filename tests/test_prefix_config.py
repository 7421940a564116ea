"""Prefix-caching and tier keys: validation errors, Mooncake block ids, generators."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsim import api, config, traces
from jaxsim import status as st_bits
from jaxsim.workload import (
    Trace,
    multi_turn_sessions,
    synthetic,
    to_workload,
    with_shared_prefixes,
)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"preemption_mode": "swap"}, "preemption_mode"),
        ({"enable_prefix_caching": True, "preemption_mode": "swap"}, "preemption_mode"),
        ({"cache": {"prefetch": True}}, "cache.prefetch"),
        ({"enable_prefix_caching": True, "cache": {"prefetch": "often"}}, "cache.prefetch"),
        ({"preemption_mode": "evict"}, "preemption_mode"),
        ({"enable_prefix_caching": "yes please"}, "enable_prefix_caching"),
        ({"cache": {"recency_weight": -1}}, "cache.recency_weight"),
        ({"cache": {"load_overlap": 1.5}}, "cache.load_overlap"),
        ({"cache": {"lru": 1}}, "cache.lru"),
        ({"enable_prefix_caching": True, "tiers": "dram,dram"}, "tiers"),
        ({"enable_prefix_caching": True, "tiers": "a,b,c,d,e,f"}, "tiers"),
        ({"enable_prefix_caching": True, "tiers": "dram",
          "tier": {"dram": {"read_gbps": 0}}}, "tier.dram.read_gbps"),
        ({"enable_prefix_caching": True, "tiers": "dram",
          "tier": {"dram": {"latency_us": -3}}}, "tier.dram.latency_us"),
        ({"enable_prefix_caching": True, "tiers": "dram",
          "tier": {"dram": {"static_power_w": -1}}}, "tier.dram.static_power_w"),
        ({"enable_prefix_caching": True, "tiers": "ssd",
          "tier.ssd.energy_pj_per_bit": "lots"}, "tier.ssd.energy_pj_per_bit"),
        ({"cache": {"admission_weight": -0.5}}, "cache.admission_weight"),
        ({"cache": {"admission_window": 0}}, "cache.admission_window"),
        ({"workload": {"kind": "sessions", "rate": 1.0}}, "workload.sessions"),
        ({"workload": {"kind": "sessions", "sessions": 4, "rate": 0}}, "workload.rate"),
        ({"workload": {"kind": "sessions", "sessions": 4, "rate": 1.0,
                       "think_time_s": -2}}, "workload.think_time_s"),
    ],
)
def test_bad_prefix_keys_name_the_field(cfg, field):
    with pytest.raises(config.ConfigError, match=f"^{field}"):
        config.validate(cfg)


def test_set_assignments_reach_tier_overrides():
    raw = config.apply_sets({}, ["enable_prefix_caching=true", "tiers=dram,ssd",
                                 "tier.dram.capacity_gb=64", "cache.load_overlap=0.5"])
    cfg = config.validate(raw)
    assert cfg["tiers"] == ["dram", "ssd"]
    assert cfg["tier"] == {"dram": {"capacity_gb": 64.0}}
    assert cfg["cache"]["load_overlap"] == 0.5


def test_tier_capacity_becomes_blocks_of_the_workload_block():
    tr = Trace([0.0], [2048], [4], hash_ids=[[1, 2, 3, 4]], hash_block_tokens=512)
    p = api.prepare({"model": "Llama-3.1-8B", "enable_prefix_caching": True,
                     "tiers": "dram,ssd", "tier": {"dram": {"capacity_gb": 64}}}, tr)
    # Llama-3.1-8B BF16: 2 * 32 layers * 8 KV heads * 128 * 2 bytes = 131072 B per token
    per_block = 512 * 131072
    caps = np.asarray(p.params.cache.capacity_blocks)[0]
    assert caps[1] == int(64e9 // per_block)
    assert p.shape.num_tiers == 3 and p.shape.cache_entries >= 4


def test_mooncake_trace_keeps_whole_prompt_blocks():
    tr = traces.bundled("mooncake_conversation_2k")
    raw = traces.load_mooncake(traces.bundled_path("mooncake_conversation_2k"),
                               with_hashes=True)[1]
    for p, ids, r in zip(tr.prompt_tokens[:50], tr.hash_ids[:50], raw[:50], strict=True):
        assert len(ids) == int(p) // 512
        assert list(ids) == r[: len(ids)]
    w = to_workload(tr.head(10))
    assert w.hash_ids.shape[0] == 10 and int(w.hash_block_tokens) == 512


def test_mooncake_bad_hash_ids_name_the_row(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, '
                 '"hash_ids": [1, "x"]}\n')
    with pytest.raises(traces.TraceError, match="row 1, column hash_ids"):
        traces.load_mooncake(str(f))


def test_shared_prefix_generator():
    base = synthetic("poisson", 200, 3000, 16, rate=5.0, seed=2)
    tr = with_shared_prefixes(base, 4, 2048, 512, seed=2)
    firsts = {tuple(h[:4]) for h in tr.hash_ids}
    assert len(firsts) == 4  # four system prompts of four blocks
    assert all(len(h) == 3000 // 512 for h in tr.hash_ids)
    own = [x for h in tr.hash_ids for x in h[4:]]
    assert len(own) == len(set(own))  # the rest is private
    with pytest.raises(ValueError, match="num_groups"):
        with_shared_prefixes(base, 0, 2048)


def test_multi_turn_sessions_extend_the_previous_context():
    tr = multi_turn_sessions(5, rate=2.0, turns={"dist": "uniform", "low": 1, "high": 4},
                             prompt_tokens=100, new_tokens=30, output_tokens=40,
                             think_time_s=5.0, block_tokens=16, seed=3)
    assert np.all(np.diff(tr.arrival_s) >= 0)
    # regroup turns by session: a session's ids are one run of consecutive integers
    by_first = {}
    for i, ids in enumerate(tr.hash_ids):
        by_first.setdefault(int(ids[0]), []).append(i)
    assert len(by_first) == 5
    for turns in by_first.values():
        for a, b in zip(turns, turns[1:], strict=False):
            assert tr.prompt_tokens[b] == tr.prompt_tokens[a] + tr.output_tokens[a] + 30
            assert tr.arrival_s[b] >= tr.arrival_s[a]
            ia, ib = tr.hash_ids[a], tr.hash_ids[b]
            assert np.array_equal(ib[:len(ia)], ia)  # the next turn extends the context
        for i in turns:
            assert len(tr.hash_ids[i]) == (tr.prompt_tokens[i] + tr.output_tokens[i]) // 16
    firsts = sorted(by_first)
    spans = [set(np.concatenate([tr.hash_ids[i] for i in by_first[f]])) for f in firsts]
    assert all(not (x & y) for j, x in enumerate(spans) for y in spans[j + 1:])


def test_sessions_workload_hits_exactly_the_previous_turns_blocks():
    """Turns far apart (think time >> latency), HBM holds everything: each later turn
    hits exactly min(blocks of the previous turn, floor((P - 1) / U)) blocks."""
    cfg = config.validate({
        "model": "Llama-3.1-8B", "enable_prefix_caching": True, "seed": 1,
        "workload": {"kind": "sessions", "sessions": 4, "rate": 0.01, "turns": 3,
                     "prompt_tokens": 200, "new_tokens": {"dist": "uniform", "low": 1,
                                                          "high": 40},
                     "output_tokens": {"dist": "uniform", "low": 1, "high": 40},
                     "think_time_s": 1000.0, "hash_block_tokens": 16}})
    tr = config.build_trace(cfg)
    res = api.run(cfg, tr)
    want = 0
    seen = {}
    for i in range(len(tr)):
        ids = tr.hash_ids[i]
        prev = seen.get(int(ids[0]))
        if prev is not None:
            want += 16 * min(prev, (int(tr.prompt_tokens[i]) - 1) // 16)
        seen[int(ids[0])] = len(ids)
    got = float(res.state.hit_tok_hi[0].sum() + res.state.hit_tok_lo[0].sum())
    assert want > 0 and got == want
    assert res.lane(0)["status"] == "ok"


@pytest.mark.slow
def test_admission_window_past_the_slot_table_is_rerun_exactly():
    """§5.8 with a window wider than the slot table: the lane is flagged, re-run with a
    larger table, and ends equal to a run whose table was large enough from the start."""
    base = synthetic("all_at_once", 30, prompt_tokens={"dist": "uniform", "low": 40,
                                                       "high": 120}, output_tokens=8, seed=2)
    tr = with_shared_prefixes(base, num_groups=3, prefix_tokens=64, block_tokens=16, seed=2)
    cfg = {"model": "Llama-3.1-8B", "enable_prefix_caching": True, "max_num_seqs": 4,
           "max_num_batched_tokens": 256, "cache": {"admission_weight": 10.0,
                                                    "admission_window": 8}}
    small = api.prepare(cfg, tr, max_slots=4)
    big = api.prepare(cfg, tr, max_slots=12)  # the size the re-runs reach (4, 8, 12)
    from jaxsim import simulate_batch
    from jaxsim import status as st_bits

    raw = simulate_batch(small.shape, small.params, small.workload, auto_slots=False)
    assert raw.status[0] & st_bits.OVERFLOW_SLOTS
    fixed = simulate_batch(small.shape, small.params, small.workload, auto_slots=True)
    ref = simulate_batch(big.shape, big.params, big.workload, auto_slots=False)
    assert fixed.status[0] == 0 and ref.status[0] == 0
    a, b = fixed.requests(0), ref.requests(0)
    for k in ("ttft_s", "queue_s", "load_s", "preemptions"):
        np.testing.assert_array_equal(a[k], b[k])
    # the weight did reorder: some request was admitted before an earlier arrival
    q = b["queue_s"]
    assert np.any(np.diff(q) < 0)


def _preempting(num=24, seed=3):
    """All requests at once into a small KV cache: many preemptions, no shared blocks."""
    return synthetic("all_at_once", num, prompt_tokens={"dist": "uniform", "low": 100,
                                                         "high": 400},
                     output_tokens={"dist": "uniform", "low": 20, "high": 120}, seed=seed)


_PREEMPT_CFG = {"model": "Llama-3.1-8B", "enable_prefix_caching": True, "tiers": "dram",
                "num_gpu_blocks": 80, "max_num_seqs": 16, "max_num_batched_tokens": 512}


def test_swap_resumes_where_it_stopped_and_a_zero_capacity_tier_is_recompute():
    """§5.10: with room in DRAM every preemption is a swap and no token is computed twice;
    with the swap tier's capacity 0, swap equals recompute on every per-request value."""
    tr = _preempting()
    swap = api.run({**_PREEMPT_CFG, "preemption_mode": "swap"}, tr)
    m = swap.lane(0)
    assert m["status"] == "ok" and m["preemptions"] > 0 and m["swaps"] == m["preemptions"]
    need = int(np.sum(tr.prompt_tokens + tr.output_tokens - 1))
    assert int(swap.metrics["tokens_scheduled"][0]) == need
    assert m["bytes_written_tier1"] > 0 and m["bytes_read_tier1"] == m["bytes_written_tier1"]

    zero = {"tier": {"dram": {"capacity_gb": 0}}}
    a = api.run({**_PREEMPT_CFG, **zero, "preemption_mode": "swap"}, tr)
    b = api.run({**_PREEMPT_CFG, **zero, "preemption_mode": "recompute"}, tr)
    assert a.lane(0)["swaps"] == 0 and a.lane(0)["preemptions"] > 0
    ra, rb = a.requests(0), b.requests(0)
    for k in ("ttft_s", "queue_s", "decode_s", "preemptions", "tokens_scheduled"):
        np.testing.assert_array_equal(ra[k], rb[k])
    assert int(b.metrics["tokens_scheduled"][0]) > need  # recompute did recompute


def test_prefetch_needs_a_shape_that_compiles_it_in():
    tr = _preempting(num=4)
    p = api.prepare({**_PREEMPT_CFG, "cache": {"prefetch": True}}, tr)
    assert p.shape.prefetch
    import dataclasses

    from jaxsim import simulate_batch

    with pytest.raises(ValueError, match="SimShape.prefetch"):
        simulate_batch(dataclasses.replace(p.shape, prefetch=False), p.params, p.workload)


@pytest.mark.slow  # long (25-40 s on 2 cores): runs in CI's slow step
def test_prefetch_turns_a_slow_tier_into_hits_within_the_overlap_window():
    """§5.11 on multi-turn sessions under load with a 3 GB/s SSD, which is slower than
    recomputing a block (§5.3): without prefetch it serves no hit; with prefetch and
    transfers hidden behind compute (overlap 1) queued turns find their prefix in HBM;
    with overlap 0 nothing can be hidden, so prefetch changes nothing."""
    base = {"model": "Llama-3.1-8B", "enable_prefix_caching": True, "seed": 1,
            "tiers": "ssd", "tier": {"ssd": {"read_gbps": 3.0}}, "num_gpu_blocks": 400,
            "max_num_seqs": 4,
            "workload": {"kind": "sessions", "sessions": 30, "rate": 8.0, "turns": 4,
                         "prompt_tokens": 1024, "new_tokens": 100, "output_tokens": 64,
                         "think_time_s": 2.0, "hash_block_tokens": 64}}
    cfgs = [config.validate({**base, "cache": {"prefetch": pf, "load_overlap": ov}})
            for pf, ov in ((False, 1.0), (True, 1.0), (False, 0.0), (True, 0.0))]
    res = api.run(cfgs, config.build_trace(cfgs[0]))
    off, on, off0, on0 = (res.lane(i) for i in range(4))
    assert all(m["status"] == "ok" for m in (off, on, off0, on0))
    assert off["hit_rate_tier1"] == 0.0 and on["hit_rate_tier1"] == 0.0  # SSD unusable
    assert on["prefetched_blocks"] > 0 and off["prefetched_blocks"] == 0
    assert on["prefix_hit_rate"] > off["prefix_hit_rate"]
    assert on["bytes_read_tier1"] > 0 and off["bytes_read_tier1"] == 0
    assert on0["prefetched_blocks"] == 0
    for k in ("ttft_s", "queue_s", "decode_s"):
        np.testing.assert_array_equal(res.requests(2)[k], res.requests(3)[k])


@pytest.mark.slow
def test_prefetch_window_past_the_slot_table_is_rerun_exactly():
    """§5.11 needs the first W waiting requests in the slot table: a lane whose window
    reaches past it is flagged, re-run, and ends equal to a large-enough table."""
    base = synthetic("all_at_once", 30, prompt_tokens={"dist": "uniform", "low": 40,
                                                       "high": 120}, output_tokens=8, seed=2)
    tr = with_shared_prefixes(base, num_groups=12, prefix_tokens=64, block_tokens=16, seed=2)
    cfg = {"model": "Llama-3.1-8B", "enable_prefix_caching": True, "max_num_seqs": 4,
           "max_num_batched_tokens": 256, "num_gpu_blocks": 40, "tiers": "dram",
           "cache": {"prefetch": True, "admission_window": 8, "load_overlap": 1.0}}
    small = api.prepare(cfg, tr, max_slots=4)
    big = api.prepare(cfg, tr, max_slots=12)
    from jaxsim import simulate_batch
    from jaxsim import status as st_bits

    raw = simulate_batch(small.shape, small.params, small.workload, auto_slots=False)
    assert raw.status[0] & st_bits.OVERFLOW_SLOTS
    fixed = simulate_batch(small.shape, small.params, small.workload, auto_slots=True)
    ref = simulate_batch(big.shape, big.params, big.workload, auto_slots=False)
    assert fixed.status[0] == 0 and ref.status[0] == 0
    assert ref.metrics["prefetched_blocks"][0] > 0
    a, b = fixed.requests(0), ref.requests(0)
    for k in ("ttft_s", "queue_s", "load_s", "preemptions"):
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow  # its own cache-table sizes compile (28 s cold on 2 cores): CI's slow step
def test_run_takes_the_cache_table_size_its_overflow_reason_names():
    """The reason for ``overflow_cache_table`` says to give a larger ``cache_entries``;
    ``api.run`` now takes it (only ``prepare`` did)."""
    tr = traces.bundled("mooncake_conversation_2k").head(40)
    res = api.run({"enable_prefix_caching": True}, tr, cache_entries=2)
    assert int(res.status[0]) == st_bits.OVERFLOW_CACHE
    (why,) = res.reasons(0)
    assert "give a larger cache_entries (jaxsim.api.run / prepare)" in why
