"""Memory-hierarchy benchmarks.

1. vLLM's published CPU-offload curve (Llama-3.1-8B, one H100, one request, prefill
   only): TTFT when the prompt's KV is loaded from CPU DRAM vs recomputed, as the prompt
   grows; the simulated curve and its error at each published point.
2. Per-iteration cost vs trace length: the same configurations with prefix caching and
   a DRAM tier on 1,000 vs 100,000 requests, a fixed number of iterations each.
3. One compiled function for a 1,024-configuration sweep of tier capacities,
   bandwidths, latencies, eviction weights and overlap (second sweep: 0 compiles).

Usage: python benchmarks/bench_tiers.py [--out benchmarks/results/tiers_cpu.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time

import jax
import numpy as np

from jaxsim import api
from jaxsim import sim as sim_mod
from jaxsim.sim import simulate_batch
from jaxsim.workload import Trace, synthetic, with_shared_prefixes

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = os.path.join(HERE, "data", "vllm_kv_offload_published.csv")
U = 512


def published_offload():
    rows = {}
    with open(PUBLISHED) as f:
        for r in csv.DictReader(f):
            if r["metric"] != "TTFT":
                continue
            kind = "cpu" if "CPU DRAM" in r["config_variant"] else "gpu"
            rows.setdefault(kind, {})[int(r["isl"])] = float(r["value"]) / 1e3
    return rows


def offload_curve():
    pub = published_offload()
    cfg = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "max_num_batched_tokens": 8192,
           "max_num_seqs": 4, "max_model_len": 131072, "enable_prefix_caching": True,
           "tiers": "dram", "tier": {"dram": {"capacity_gb": 500}}}
    out = []
    for P in sorted(pub["cpu"]):
        n = P // U
        a = list(range(n))
        filler_len = 131072 - 8
        # The filler has no block ids: it pushes A's blocks out to DRAM while it runs and
        # leaves nothing cached, so B's iteration only loads (vLLM's offloading stores
        # blocks as they are computed, so its measured TTFT has no write burst either).
        filler: list[int] = []
        res = {}
        for label, b in (("cpu", a), ("gpu", list(range(2 * 10**6, 2 * 10**6 + n)))):
            tr = Trace([0.0, 1000.0, 2000.0], [P, filler_len, P], [1, 4, 1], "offload",
                       [a, filler, b], U)
            # 8 spare KV blocks (128 tokens) after the filler: no whole 512-token block of A
            # stays in HBM, so B loads its every cached block from DRAM
            p = api.prepare([{**cfg, "num_gpu_blocks": 131072 // 16 + 8}], tr, max_slots=4)
            r = simulate_batch(p.shape, p.params, p.workload)
            assert r.lane(0)["status"] == "ok", r.lane(0)["status"]
            res[label] = float(np.asarray(r.state.ttft_s)[0, 2])
            if label == "cpu":
                st = r.state
                res["dram_hit_tokens"] = float(st.hit_tok_hi[0, 1] + st.hit_tok_lo[0, 1])
        row = {"prompt_tokens": P, "sim_cpu_ttft_s": res["cpu"], "sim_gpu_ttft_s": res["gpu"],
               "dram_hit_tokens": res["dram_hit_tokens"],
               "pub_cpu_ttft_s": pub["cpu"].get(P), "pub_gpu_ttft_s": pub["gpu"].get(P)}
        for k in ("cpu", "gpu"):
            if row[f"pub_{k}_ttft_s"]:
                row[f"err_{k}"] = res[k] / row[f"pub_{k}_ttft_s"] - 1.0
        out.append(row)
        print(f"  {P:>6} tokens: CPU hit {res['cpu'] * 1e3:7.1f} ms (published "
              f"{(row['pub_cpu_ttft_s'] or float('nan')) * 1e3:6.0f}, err "
              f"{row.get('err_cpu', float('nan')):+.1%}), recompute {res['gpu'] * 1e3:7.1f} ms "
              f"(published {(row['pub_gpu_ttft_s'] or float('nan')) * 1e3:6.0f}, err "
              f"{row.get('err_gpu', float('nan')):+.1%})")
    return out


def trace_length(lanes=16, iterations=2048):
    out = {}
    cfgs = [{"model": "Llama-3.1-8B", "gpu": "H100-SXM", "max_num_seqs": 64,
             "num_gpu_blocks": 4000, "enable_prefix_caching": True, "tiers": "dram,ssd",
             "tier": {"dram": {"capacity_gb": float(c)}}, "cost_preset": "uncalibrated"}
            for c in np.linspace(2, 32, lanes)]
    for R in (1000, 100_000):
        base = synthetic("poisson", R, {"dist": "uniform", "low": 512, "high": 4096},
                         {"dist": "uniform", "low": 16, "high": 256}, rate=20.0, seed=1)
        tr = with_shared_prefixes(base, 8, 2048, U, seed=1)
        p = api.prepare(cfgs, tr, max_slots=64, cache_entries=2048)
        simulate_batch(p.shape, p.params, p.workload, max_iterations=iterations)  # compile
        t0 = time.perf_counter()
        r = simulate_batch(p.shape, p.params, p.workload, max_iterations=iterations)
        wall = time.perf_counter() - t0
        it = int(np.asarray(r.metrics["iterations"]).sum())
        out[R] = {"wall_s": wall, "lane_iterations": it, "us_per_lane_iteration":
                  wall / it * 1e6, "hash_space": p.shape.hash_space,
                  "cache_entries": p.shape.cache_entries}
        print(f"  R={R:>7}: {wall:.2f} s for {it} lane-iterations "
              f"({wall / it * 1e6:.1f} us each; U={p.shape.hash_space})")
    ratio = out[100_000]["us_per_lane_iteration"] / out[1000]["us_per_lane_iteration"]
    print(f"  ratio 100k/1k: {ratio:.2f} (bar <= 1.5)")
    return {"runs": {str(k): v for k, v in out.items()}, "ratio_100k_over_1k": ratio}


def one_compile(n=1024):
    rng = np.random.default_rng(0)
    base = synthetic("poisson", 32, {"dist": "uniform", "low": 256, "high": 3000}, 16,
                     rate=8.0, seed=3)
    tr = with_shared_prefixes(base, 4, 1536, U, seed=3)

    def batch():
        return [{"model": "Llama-3.1-8B", "gpu": "H100-SXM", "max_num_seqs": 16,
                 "num_gpu_blocks": 1200, "enable_prefix_caching": True,
                 "tiers": "dram,cxl,ssd",
                 "tier": {"dram": {"capacity_gb": float(rng.choice([0, 2, 8, 32])),
                                   "read_gbps": float(rng.uniform(5, 60))},
                          "cxl": {"capacity_gb": float(rng.choice([0, 16, 64])),
                                  "latency_us": float(rng.uniform(0.1, 1))},
                          "ssd": {"capacity_gb": float(rng.choice([0, 100, 1000])),
                                  "read_gbps": float(rng.uniform(1, 14))}},
                 "cache": {"recency_weight": float(rng.uniform(0, 2)),
                           "frequency_weight": float(rng.uniform(0, 50)),
                           "depth_weight": float(rng.uniform(0, 5)),
                           "load_overlap": float(rng.uniform(0, 1))}}
                for _ in range(n)]

    c0 = sim_mod._run_chunk_batch._cache_size()
    t0 = time.perf_counter()
    p1 = api.prepare(batch(), tr, max_slots=16, cache_entries=1024)
    r1 = simulate_batch(p1.shape, p1.params, p1.workload)
    t1 = time.perf_counter()
    c1 = sim_mod._run_chunk_batch._cache_size()
    p2 = api.prepare(batch(), tr, max_slots=16, cache_entries=1024)
    r2 = simulate_batch(p2.shape, p2.params, p2.workload)
    t2 = time.perf_counter()
    c2 = sim_mod._run_chunk_batch._cache_size()
    ok = int((r1.status == 0).sum() + (r2.status == 0).sum())
    spread = float(np.nanmax(r2.metrics["ttft_p99_s"]) / np.nanmin(r2.metrics["ttft_p99_s"]))
    print(f"  sweep 1: {n} configs, {c1 - c0} compile(s), {t1 - t0:.1f} s; sweep 2: "
          f"{c2 - c1} compiles, {t2 - t1:.1f} s; {ok}/{2 * n} lanes ok; TTFT p99 spread "
          f"{spread:.2f}x")
    return {"configs_per_sweep": n, "compiles_first": c1 - c0, "compiles_second": c2 - c1,
            "wall_first_s": t1 - t0, "wall_second_s": t2 - t1, "lanes_ok": ok,
            "ttft_p99_max_over_min": spread}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "results", "tiers_cpu.json"),
                    help="the record's file (default benchmarks/results/tiers_cpu.json)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: "
                    "offload,length,compile")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    if skip - {"offload", "length", "compile"}:
        ap.error(f"--skip: {','.join(sorted(skip - {'offload', 'length', 'compile'}))}: "
                 "not a part; the parts are offload, length, compile")
    res = {"machine": f"{platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} cores, {jax.default_backend()}",
           "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/bench_tiers.py"}
    if "offload" not in skip:
        print("vLLM CPU-offload TTFT curve (Llama-3.1-8B, H100):")
        res["offload_curve"] = offload_curve()
    if "length" not in skip:
        print("per-iteration cost vs trace length:")
        res["trace_length"] = trace_length()
    if "compile" not in skip:
        print("one compile per sweep of tier values:")
        res["one_compile"] = one_compile()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    old = {}
    if os.path.exists(a.out):
        with open(a.out) as f:
            old = json.load(f)
    # the date of each part: a run with --skip keeps the parts it skipped from before
    dates = old.get("part_dates") or {k: old.get("date") for k in
                                      ("offload_curve", "trace_length", "one_compile")
                                      if k in old}
    dates.update({k: res["date"] for k in ("offload_curve", "trace_length", "one_compile")
                  if k in res})
    old.update(res)
    old["part_dates"] = dates
    with open(a.out, "w") as f:
        json.dump(old, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
