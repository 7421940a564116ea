"""Prefix-caching and tier keys: validation errors, Mooncake block ids, generators."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsim import api, config, traces
from jaxsim.workload import Trace, synthetic, to_workload, with_shared_prefixes


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
