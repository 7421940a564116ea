"""Prefix-caching and tier keys: validation errors, Mooncake block ids, generators."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsim import api, config, traces
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
